"""The mistakes a user can make, as exceptions whose message names the file, key or value and the fix.

train.py prints such an error as one line (the traceback goes to the run's train.log); any other exception is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message alone says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work: the message names the key, its value and the fix."""


class DatasetError(UserError, RuntimeError):
    """Data missing, damaged or in the wrong layout; the message names the path and the fix."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, damaged or not one of this project's; the message names the file."""
