"""The one error type for problems the user can fix (bad input, missing files, missing packages)."""


class DetrDeployError(Exception):
    """A user or environment problem. The message says what went wrong and what to do next.

    The CLI prints it as one line and exits with code 2. Any other exception is a bug and keeps its traceback.
    """


class Interrupted(BaseException):
    """A termination signal (SIGTERM, SIGHUP) turned into an exception, as Python turns SIGINT into
    KeyboardInterrupt, so that every ``finally`` and ``atomic_output`` cleanup runs before the process exits.

    A BaseException, so that ``except Exception`` handlers do not swallow it."""

    def __init__(self, signal_number: int):
        import signal

        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number
