"""The one error type users see.

Anything raised as `HetGMPError` is a problem with the user's input or setup;
the CLI prints its message (which states the rule, the values seen and the
fix) and exits with status 2, without a traceback.
"""


class HetGMPError(Exception):
    """A user-facing error: bad input, bad flags, or a mismatched file."""


class Interrupted(HetGMPError):
    """Ctrl-C (SIGINT) ended the command; the message says what was kept. Exit status 130."""
