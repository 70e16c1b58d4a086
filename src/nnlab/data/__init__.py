class DatasetError(RuntimeError):
    """Data missing, damaged or in the wrong layout; the message names the path and the fix."""
