"""The one error type for problems the user can fix (bad input, missing files, missing packages)."""


class DetrDeployError(Exception):
    """A user or environment problem. The message says what went wrong and what to do next.

    The CLI prints it as one line and exits with code 2. Any other exception is a bug and keeps its traceback.
    """
