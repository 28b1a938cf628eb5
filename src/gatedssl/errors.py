"""One exception type for mistakes a user can fix; the CLI prints it as one line, no traceback."""


class UserError(Exception):
    """A problem with the user's input or environment: say what is wrong and what to do."""
