"""One base class for errors caused by the user's input (files, specs, environment).

The CLI prints these as one line, without a traceback; anything else is a bug.
"""


class UserError(ValueError):
    """Bad input or environment; the message names the file, the field and the fix."""
