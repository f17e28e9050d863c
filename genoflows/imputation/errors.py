"""Errors of the imputation pipeline, split by whether waiting and retrying can help.

`PermanentImputationError` subclasses fail at once (the retry policy never retries them); everything else
(`TransientServerError`, connection errors) is retried with backoff by the calling task.
"""

from __future__ import annotations


class ImputationError(RuntimeError):
    """Base class of every imputation error."""


class PermanentImputationError(ImputationError):
    """Retrying cannot help: bad input, bad token, a job the server failed, exhausted downloads."""


class InputValidationError(PermanentImputationError):
    """An input VCF is unfit to send; the message names the file and what to do."""


class AuthError(PermanentImputationError):
    """401/403: the token is missing, invalid, expired or revoked."""


class ServerJobFailed(PermanentImputationError):
    """The server ran the job and failed it (state 5/9/6/-1); the message carries the server's own text."""


class ResultsRetired(PermanentImputationError):
    """The server deleted the results (state 7 or 10): they cannot be downloaded any more."""


class DownloadLimitExhausted(PermanentImputationError):
    """A result file has no downloads left on the server (10 per file)."""


class CorruptDownload(ImputationError):
    """A downloaded file failed its size or content check; downloading again may help while downloads remain."""


class BadZipPassword(PermanentImputationError):
    """The results password does not open the zip."""


class UnsafeArchive(PermanentImputationError):
    """A zip entry would be written outside the output directory."""


class TransientServerError(ImputationError):
    """5xx, maintenance (503), the concurrent-job limit, a dropped connection: wait and try again."""


class JobRecordConflict(PermanentImputationError):
    """The job record in out_dir belongs to other inputs or parameters."""
