"""The one exception type for mistakes a user can make.

Anything raised as :class:`LoraMergeError` is shown by the CLI as a single
clear line (no traceback) and exits with status 2. Its message must say what
was wrong and, where possible, what to do about it.
"""


class LoraMergeError(Exception):
    """A user-facing error: bad input, a missing file, an impossible request."""
