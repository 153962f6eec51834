"""One error tree for every transfer, so retry decisions are made by type, in one place.

Wire adapters translate their library's exceptions into these once, at the boundary; the engine and the
Airflow glue never look at HTTP status codes or SDK exception classes.

    TransferError
    ├── RetryableError            transient: try the same request again after a backoff
    │   ├── ThrottledError        the server asked us to slow down (carries Retry-After)
    │   │   └── RateLimitedError  429: the workspace's request limit; pacing, not a failure
    │   └── ConnectionLostError   reset, timeout, short body
    ├── UrlExpiredError           a presigned URL expired: mint a new one, then retry
    ├── SessionLostError          the remote upload session is gone: start the upload clean
    ├── RetryBudgetExceeded       transient errors went on too long: keep the checkpoint, retry the task
    └── FatalError                retrying cannot help
        ├── AuthError
        ├── RemoteNotFoundError
        ├── AlreadyExistsError
        ├── RemoteChangedError     the remote object changed under a download (ETag/Last-Modified)
        ├── SourceChangedError     the local source changed during or between tries
        ├── ChecksumMismatchError  the downloaded bytes are not the expected SHA-256
        ├── VerificationError      the downloaded file fails a check (size, Content-MD5, format)
        ├── CheckpointError        a checkpoint that is corrupt, foreign or from the future
        ├── InsufficientSpaceError the local disk is full
        ├── MultipartUnavailableError the workspace offers no multipart/presigned upload here
        └── InvalidRequestError    the server refused the request as malformed (4xx)
"""

from __future__ import annotations


class TransferError(Exception):
    """Base of every error this package raises for a transfer."""


class RetryableError(TransferError):
    """A transient failure: the same request may succeed later."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ThrottledError(RetryableError):
    """429/503 and friends; ``retry_after_s`` is the server's Retry-After when it sent one."""


class RateLimitedError(ThrottledError):
    """429: over the workspace's request limits (~10 concurrent, 100/s, shared by every client of it).

    Busy neighbours cause it, not a fault of this request, so its retries are paced by Retry-After and
    bounded by time (``RetryPolicy.max_rate_limited_wait_s``) rather than by the attempt budgets.
    """


class ConnectionLostError(RetryableError):
    """The connection broke (reset, timeout, a body shorter than announced)."""


class UrlExpiredError(TransferError):
    """A presigned URL is no longer valid; ask for a fresh one (never retry the same URL)."""


class SessionLostError(TransferError):
    """The remote multipart session no longer exists (expired or aborted)."""


class FatalError(TransferError):
    """Retrying the same request cannot succeed."""


class AuthError(FatalError):
    pass


class RemoteNotFoundError(FatalError):
    pass


class AlreadyExistsError(FatalError):
    pass


class RemoteChangedError(FatalError):
    """The remote object changed while we were reading it; never splice two versions."""


class SourceChangedError(FatalError):
    """The local source is not the file the transfer (or its checkpoint) was planned for."""


class ChecksumMismatchError(FatalError):
    """The downloaded bytes do not have the SHA-256 the caller expected; fetching again cannot help."""


class VerificationError(FatalError):
    """The finished file failed a check (size, Content-MD5, a format verifier); the partial is deleted."""


class CheckpointError(FatalError):
    """A checkpoint cannot be used: corrupt, for another transfer, or from a newer schema."""


class InsufficientSpaceError(FatalError):
    """The destination filesystem is full; what was written so far is kept for a resume."""


class InvalidRequestError(FatalError):
    pass


class MultipartUnavailableError(FatalError):
    """No multipart session can be had (presigned URLs disabled, serverless network zone...)."""


class RetryBudgetExceeded(TransferError):
    """Transient failures went on past the recovery budget; a later try may well succeed."""

    def __init__(self, message: str, last_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error
