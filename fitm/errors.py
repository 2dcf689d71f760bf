"""The one exception type users see: the CLI prints its message as one line and exits with code 2."""


class FitmError(Exception):
    """Bad input or an unusable artifact; the message names the file or option and what was expected."""
