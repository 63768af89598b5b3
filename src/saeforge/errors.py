"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single line `saeforge: error: ...` and exit status 2 (docs/design.md,
"Errors"). Library code raises it for bad input; anything else is a bug and keeps its
traceback.
"""

import logging
from contextlib import contextmanager


class UserError(Exception):
    """A mistake in the user's input (option, file, shape), with a message saying how to fix it."""


@contextmanager
def quiet_hub_logs():
    """Silence huggingface_hub's retry warnings, so a failed hub lookup ends in our one line."""
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
