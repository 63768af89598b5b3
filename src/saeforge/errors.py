"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single line `saeforge: error: ...` and exit status 2 (DESIGN.md,
contract 4). Library code raises it for bad input; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (option, file, shape), with a message saying how to fix it."""
