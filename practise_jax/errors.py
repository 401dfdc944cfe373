"""The one exception type for mistakes a user can make.

The CLI prints a `UserError` as a single line (cause and fix) without a
traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input: the message names the cause and the fix."""
