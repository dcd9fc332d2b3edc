"""The one exception type that reaches users as a one-line message.

Anything raised as :class:`ShiftkitError` is a problem with the input (a name, a value, a file), not a
bug: the command line prints ``shiftkit: error: <message>`` and exits with status 2.
"""


class ShiftkitError(ValueError):
    """A user-facing error: bad configuration, bad data or a missing file."""


class ShiftkitWarning(UserWarning):
    """Something the user should know that does not stop the command (a damaged run skipped, a report
    that could not be written); the command line prints it as one line, ``shiftkit: warning: <message>``."""
