"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single line `saeforge: error: ...` and exit status 2 (docs/design.md,
"Errors"). Library code raises it for bad input; anything else is a bug and keeps its
traceback.
"""

import contextlib
import io
import logging
from contextlib import contextmanager


class UserError(Exception):
    """A mistake in the user's input (option, file, shape), with a message saying how to fix it."""


@contextmanager
def quiet_logs(*names: str, level: int = logging.CRITICAL):
    """Silence third-party loggers (huggingface_hub's retries, datasets' own error lines) for the
    block, so that a failure ends in our one line; restored afterwards."""
    logs = [logging.getLogger(n) for n in names]
    before = [log.level for log in logs]
    for log in logs:
        log.setLevel(level)
    try:
        yield
    finally:
        for log, lvl in zip(logs, before):
            log.setLevel(lvl)


def quiet_hub_logs():
    return quiet_logs("huggingface_hub", level=logging.ERROR)


@contextmanager
def quiet_third_party():
    """Keep third-party progress bars, prints and log lines (transformers' "Loading weights" bar,
    TransformerLens's "Moving model to device") off the terminal for the block: stdout is the
    commands' JSON, and an error must end in our one line."""
    loggers = ("transformers", "transformer_lens", "huggingface_hub", "datasets")
    with quiet_logs(*loggers, level=logging.ERROR), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:  # pragma: no cover - transformers comes with transformer-lens
            yield
            return
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if bars:
                hf_logging.enable_progress_bar()
