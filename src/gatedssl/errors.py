"""Errors the CLI turns into one line and an exit code, never a traceback (torch-free: `gatedssl --help` loads it)."""


class UserError(Exception):
    """A problem with the user's input or environment: say what is wrong and what to do."""


class RunStopped(Exception):
    """Training stopped on purpose (signal, non-finite loss): a message and the exit code to use."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


EXIT_SIGNAL = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGINT with a checkpoint written; --resume continues
EXIT_NONFINITE = 3
