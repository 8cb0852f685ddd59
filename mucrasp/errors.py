"""The one exception type a user sees.

Library code raises `MucraspError` for anything the user can fix (a bad path, a bad ratio, an
unsupported model). The CLI prints its message as a single line and exits non-zero; every other
exception is a bug and keeps its traceback.
"""


class MucraspError(Exception):
    """A problem with the user's input or environment, reported as one line."""
