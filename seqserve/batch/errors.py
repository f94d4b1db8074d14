"""The batch job's exceptions, in one place.

A *record* failure (bad JSON, wrong feature count, NaN, a sequence the server rejects) goes to the
errors file and the run goes on; every other `BatchError` stops the run with exit status 1.
"""

from __future__ import annotations


class BatchError(Exception):
    """Base class: a failure that stops the whole run."""


class InputError(BatchError):
    """The input as a whole cannot be read: missing file, unknown format, a column or array missing."""


class OutputError(BatchError):
    """The output cannot be written or resumed: it exists without --resume, or is not ours."""


class BackendError(BatchError):
    """The model cannot run at all: model not found, server unreachable after every retry."""


class RecordRejected(Exception):
    """The backend refused the sequences of one call (e.g. the server's INVALID_ARGUMENT).

    The pipeline then retries the sequences one by one, so only the bad ones fail.
    """
