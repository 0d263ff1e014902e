"""The base of every error caused by the user's input; the CLI prints these as one line, exit 2."""


class EdgeqatError(Exception):
    """Bad input or environment; ``str(error)`` names the bad value and the fix."""
