"""The one error of reading a table, shared by vae-train and vae-score so that both name a problem the same way."""


class ReportedError(Exception):
    """A failure a command-line tool reports in one line and no traceback (vae-train's TrainingError is this class)."""


class DataError(ReportedError):
    """The input data cannot be used: missing, unreadable, non-numeric, non-finite, too small, wrong shape.

    The message names the file, the row and column where there is one, and says what to do."""
