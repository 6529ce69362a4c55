"""The one exception type whose message is shown to the user as a single line."""


class GradPrunerError(Exception):
    """A problem with the user's input or environment; the CLI prints it and exits non-zero."""
