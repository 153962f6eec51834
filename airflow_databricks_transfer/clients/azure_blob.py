"""Azure Blob Storage adapter: the engine's download source and staged-block upload target.

Built on azure-storage-blob (its pipeline does the auth and signing). The client must come with the
SDK's pipeline retries off (``retry_total=0``, as ``AzureBlobTransferHook`` builds it): the engine's
policy retries instead, with its own backoff, Retry-After handling and budget, where the SDK's default
sleeps 15-24 s per retry (reference/azure.md section 4). Every library error is translated once, here,
into the engine's error tree.

- Downloads: ranged GETs, each pinned with If-Match to the ETag seen at the start, so an overwritten
  blob fails the range (412) instead of mixing versions.
- Uploads: Put Block with ids derived from an upload id and the part number (fixed length, so a retry
  recognises its own blocks and two uploads to one blob never collide) and a transactional Content-MD5
  the service checks; then Put Block List with the whole blob's Content-MD5 when it was computed.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobClient, BlobServiceClient, ContentSettings
from azure.storage.blob._generated.models import ModifiedAccessConditions

from airflow_databricks_transfer.engine.checkpoint import RemoteVersion
from airflow_databricks_transfer.engine.clock import ServerClock
from airflow_databricks_transfer.engine.errors import (
    AlreadyExistsError,
    AuthError,
    ConnectionLostError,
    InvalidRequestError,
    RemoteChangedError,
    RemoteNotFoundError,
    RetryableError,
    SessionLostError,
    ThrottledError,
    TransferError,
)
from airflow_databricks_transfer.engine.planning import MiB
from airflow_databricks_transfer.engine.ports import Pace, RangeReader, SingleShotBody, UploadSession
from airflow_databricks_transfer.engine.retry import Cancelled

log = logging.getLogger(__name__)
T = TypeVar("T")

# Download range sizes by blob size (the seed's small/medium/large tiers, scaled to what throughput
# needs): Azurite reads and MD5-hashes ranges of 4 MiB or less twice, and 8 MiB ranges on 4 threads
# measured about 2x the SDK's download there (reference/azure.md section 2); a very large blob takes
# bigger ranges so its checkpoint stays small.
SMALL_BLOB_BYTES = 8 * MiB
LARGE_BLOB_BYTES = 8 * 1024 * MiB


def chunk_size_for(size: int) -> int:
    """The download range size for a blob of ``size`` bytes (one range when small)."""
    if size <= SMALL_BLOB_BYTES:
        return max(size, 1)
    if size <= LARGE_BLOB_BYTES:
        return 8 * MiB
    return 32 * MiB


# Blocks: 8 MiB by default (Azurite checks MD5 natively but CRC64 in JavaScript, and Put Block of
# 8 MiB with Content-MD5 is its fastest measured form); raised to fit 50,000 blocks.
DEFAULT_BLOCK_BYTES = 8 * MiB


@dataclass(frozen=True)
class BlobRef:
    container: str
    name: str

    def __post_init__(self) -> None:
        if not self.container or not self.name:
            raise InvalidRequestError(
                f"a blob needs a container and a name: {self.container!r}/{self.name!r}"
            )
        if self.name.endswith("/"):
            raise InvalidRequestError(f"a blob name may not end with '/': {self.name!r}")


def _status(err: HttpResponseError) -> int | None:
    return getattr(err, "status_code", None)


def _error_code(err: AzureError) -> str:
    code = getattr(err, "error_code", None)
    if code:
        # the SDK stores known codes as StorageErrorCode members, whose str() is "StorageErrorCode.X"
        return str(getattr(code, "value", code))
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None) or {}
    return str(headers.get("x-ms-error-code", ""))


def _retry_after(err: AzureError) -> float | None:
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# Azure answers a wrong key, an expired SAS and a missing permission alike (403), so name all three
_AUTH_HINT = (
    "(check the account key, the SAS token's permissions and expiry, or the identity's role on the container)"
)


def translate(err: BaseException, what: str) -> BaseException:
    """One mapping from azure-core/storage errors to the engine's tree (never a message with a SAS:
    the SDK's messages name the operation and error code, not the URL's query)."""
    if isinstance(err, (TransferError, Cancelled)):
        return err
    code = _error_code(err) if isinstance(err, AzureError) else ""
    detail = f"{what}: {code or type(err).__name__}"
    if isinstance(err, ResourceModifiedError):
        return RemoteChangedError(f"{detail}: the blob changed (its ETag no longer matches)")
    if isinstance(err, ResourceNotFoundError):
        if code == "ContainerNotFound":
            return RemoteNotFoundError(f"{detail}: the container does not exist")
        return RemoteNotFoundError(f"{detail}: not found")
    if isinstance(err, ResourceExistsError):
        return AlreadyExistsError(f"{detail}: already exists")
    if isinstance(err, ClientAuthenticationError):
        return AuthError(f"{detail}: refused {_AUTH_HINT}")
    if isinstance(err, (IncompleteReadError, ServiceResponseError, ServiceRequestError)):
        return ConnectionLostError(f"{detail}: {err.__class__.__name__}")
    if isinstance(err, HttpResponseError):
        status = _status(err) or 0
        if status == 412:
            return RemoteChangedError(f"{detail}: a condition failed (the blob changed)")
        if status in (429, 503) or code in ("ServerBusy", "OperationTimedOut"):
            return ThrottledError(f"{detail}: throttled ({status})", retry_after_s=_retry_after(err))
        if status >= 500 or status == 408:
            return RetryableError(f"{detail}: server error {status}", retry_after_s=_retry_after(err))
        if code == "Md5Mismatch":
            # the block was damaged on its way: sending it again from our buffer is the cure
            return RetryableError(f"{detail}: the service computed another MD5 for the bytes sent")
        if code == "InvalidBlockList":
            return SessionLostError(
                f"{detail}: staged blocks of this upload are gone (expired after 7 days?)"
            )
        if status in (401, 403):
            return AuthError(f"{detail}: refused ({status}) {_AUTH_HINT}")
        return InvalidRequestError(f"{detail}: refused ({status})")
    if isinstance(err, AzureError):
        return ConnectionLostError(f"{detail}: {err.__class__.__name__}")
    return err


def _call(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except (TransferError, Cancelled):
        raise
    except (AzureError, OSError) as err:
        raise translate(err, what) from err


def _remote_version(props: Any) -> RemoteVersion:
    md5 = props.content_settings.content_md5 if props.content_settings else None
    modified = props.last_modified
    return RemoteVersion(
        int(props.size),
        props.etag,
        modified.strftime("%a, %d %b %Y %H:%M:%S GMT") if modified is not None else None,
        base64.b64encode(bytes(md5)).decode("ascii") if md5 else None,
    )


class AzureBlobClient:
    """The transfer adapter for one storage account (a ``BlobServiceClient`` built by the hook)."""

    def __init__(self, service: BlobServiceClient, *, block_timeout_s: int = 120) -> None:
        self.service = service
        self.clock = ServerClock()
        # server-side timeout of one data call, and a bound on how long a stalled one waits
        self.block_timeout_s = block_timeout_s

    @property
    def account_name(self) -> str:
        return str(self.service.account_name)

    def uri(self, ref: BlobRef) -> str:
        """A credential-free name for logs, checkpoints and lineage."""
        return f"azure://{self.account_name}/{ref.container}/{ref.name}"

    def blob(self, ref: BlobRef) -> BlobClient:
        return self.service.get_blob_client(ref.container, ref.name)

    def observe(self, sent_at: float) -> Callable[[Any], None]:
        """A raw_response_hook that feeds the server's Date to the clock."""

        def hook(response: Any) -> None:
            headers = response.http_response.headers
            self.clock.observe(headers.get("Date"), sent_at, time.time())

        return hook

    def stat(self, ref: BlobRef) -> RemoteVersion | None:
        blob = self.blob(ref)
        try:
            props = blob.get_blob_properties(raw_response_hook=self.observe(time.time()))
        except ResourceNotFoundError as err:
            if _error_code(err) == "ContainerNotFound":
                raise translate(err, f"properties of {self.uri(ref)}") from err
            return None
        except (AzureError, OSError) as err:
            raise translate(err, f"properties of {self.uri(ref)}") from err
        return _remote_version(props)

    def list_blobs(self, container: str, prefix: str = "") -> Iterator[tuple[str, int]]:
        client = self.service.get_container_client(container)
        try:
            for item in client.list_blobs(name_starts_with=prefix or None):
                yield item.name, int(item.size)
        except (AzureError, OSError) as err:
            raise translate(err, f"list {container}/{prefix}") from err

    def download_source(self, ref: BlobRef) -> AzureBlobDownloadSource:
        return AzureBlobDownloadSource(self, ref)

    def upload_target(self, ref: BlobRef, *, overwrite: bool = True) -> AzureBlobUploadTarget:
        return AzureBlobUploadTarget(self, ref, overwrite=overwrite)


class _StreamReader:
    """The body of one ranged GET, read straight into the caller's buffer (no copy of the range).

    azure-storage-blob's ``download_blob`` reads a whole range into one ``bytes`` (and retries body
    reads itself, three times with a one-second sleep): measured on Azurite, that held our download at
    the SDK's speed and doubled the memory of Blob -> Volume. The request still goes through the SDK's
    generated operation and pipeline (auth, signing, conditions); only the body is read here.
    """

    def __init__(self, response: Any, what: str) -> None:
        self._response = response
        self._raw = response.internal_response.raw
        self._what = what

    # urllib3 reads a readinto() as read(len(buf)) plus a copy: asking at most this much at a time
    # keeps that temporary small (a 16 MiB part buffer would otherwise be allocated twice)
    _PIECE = 1024 * 1024

    def readinto(self, buf: memoryview) -> int:
        try:
            return int(self._raw.readinto(buf[: self._PIECE]))
        except (OSError, ValueError) as err:
            raise ConnectionLostError(f"{self._what}: the body broke off ({type(err).__name__})") from err
        except Exception as err:  # urllib3's ProtocolError / ReadTimeoutError are not OSErrors
            raise ConnectionLostError(f"{self._what}: the body broke off ({type(err).__name__})") from err

    def close(self) -> None:
        self._response.internal_response.close()


class _EmptyReader:
    def readinto(self, buf: memoryview) -> int:
        return 0

    def close(self) -> None:
        pass


class AzureBlobDownloadSource:
    """Ranged reads of one blob, each pinned to the version (ETag) seen at the start."""

    def __init__(self, client: AzureBlobClient, ref: BlobRef) -> None:
        self.client, self.ref = client, ref
        # one client per transfer, shared by the workers (the SDK's clients are thread-safe), not one
        # built for every range
        self._blob = client.blob(ref)

    @property
    def path(self) -> str:
        return self.client.uri(self.ref)

    def stat(self) -> RemoteVersion:
        remote = self.client.stat(self.ref)
        if remote is None:
            raise RemoteNotFoundError(f"{self.path} does not exist")
        return remote

    def open_range(
        self, start: int, length: int, pinned: RemoteVersion, *, cancel: threading.Event | None = None
    ) -> RangeReader:
        if cancel is not None and cancel.is_set():
            raise Cancelled("download stopped")
        if length == 0:
            return _EmptyReader()
        if not pinned.etag:
            raise RemoteChangedError(f"{self.path}: no ETag to pin the download to")
        blob = self._blob
        what = f"bytes {start}-{start + length - 1} of {self.path}"

        def fetch() -> Any:
            response = blob._client.blob.download(  # the SDK's generated operation (private, used since 12.0)
                range=f"bytes={start}-{start + length - 1}",
                modified_access_conditions=ModifiedAccessConditions(if_match=pinned.etag),
                timeout=self.client.block_timeout_s,
                cls=lambda pipeline_response, _body, _headers: pipeline_response.http_response,
            )
            # Azurite answers 206 with an empty body past the end where Azure says 416: count bytes
            got = int(response.headers.get("Content-Length", -1))
            if got != length:
                response.internal_response.close()
                raise ConnectionLostError(f"{what}: the answer announces {got} bytes")
            return response

        return _StreamReader(_call(fetch, what), what)

    @property
    def data_pin(self) -> str | None:
        return None  # the ETag in the pinned RemoteVersion is what every range sends

    def restore_pin(self, pin: str | None) -> None:
        pass

    def invalidate_url(self) -> None:
        pass


def block_id(upload_id: str, part_number: int) -> str:
    """Fixed length for every block of an upload (the service requires one length per blob)."""
    return f"adt-{upload_id}-{part_number:06d}"


def _part_of(upload_id: str, block: str) -> int | None:
    prefix = f"adt-{upload_id}-"
    if not block.startswith(prefix) or len(block) != len(prefix) + 6:
        return None
    try:
        return int(block[len(prefix) :])
    except ValueError:
        return None


class AzureBlobUploadTarget:
    """Staged blocks + a committed block list; small files go in one Put Blob.

    With ``overwrite`` off the commit itself is conditional (If-None-Match: *), so a blob another writer
    created while the blocks were staged is never replaced.
    """

    def __init__(self, client: AzureBlobClient, ref: BlobRef, *, overwrite: bool = True) -> None:
        self.client, self.ref, self.overwrite = client, ref, overwrite
        self._blob = client.blob(ref)  # one per transfer, shared by the workers (thread-safe)

    @property
    def destination(self) -> str:
        return self.client.uri(self.ref)

    def server_time(self, local: float | None = None) -> float:
        return (time.time() if local is None else local) + self.client.clock.skew_s

    def stat(self) -> RemoteVersion | None:
        return self.client.stat(self.ref)

    def put_single(
        self,
        body: SingleShotBody,
        *,
        overwrite: bool,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("upload stopped")
        conditions: dict[str, Any] = {} if overwrite else {"match_condition": MatchConditions.IfMissing}
        blob = self._blob
        what = f"Put Blob {self.destination}"
        if isinstance(body, memoryview):
            data = bytes(body)
            if pace is not None:
                pace(len(data))
            _call(
                lambda: blob.upload_blob(
                    data, length=len(data), overwrite=overwrite, validate_content=True, **conditions
                ),
                what,
            )
            return
        path, size = body
        if pace is not None:
            pace(size)
        with open(path, "rb") as f:
            _call(
                lambda: blob.upload_blob(
                    f,
                    length=size,
                    overwrite=overwrite,
                    validate_content=True,
                    max_concurrency=1,
                    **conditions,
                ),
                what,
            )

    def initiate(self, *, overwrite: bool) -> UploadSession:
        """A fresh upload id; nothing is asked of the service (blocks are staged under it)."""
        if not overwrite and self.stat() is not None:
            raise AlreadyExistsError(f"{self.destination} already exists and overwrite is off")
        return UploadSession("multipart", secrets.token_hex(8))

    def stage_block(
        self,
        token: str,
        part_number: int,
        body: memoryview,
        *,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> str:
        if cancel is not None and cancel.is_set():
            raise Cancelled("upload stopped")
        if pace is not None:
            pace(len(body))
        blob = self._blob
        answer = _call(
            lambda: blob.stage_block(
                block_id(token, part_number),
                # the SDK's MD5 step takes only bytes or a seekable file: one copy of the block, a few
                # milliseconds against the tens its transfer takes
                bytes(body),
                length=len(body),
                validate_content=True,
                timeout=self.client.block_timeout_s,
            ),
            f"Put Block {part_number} of {self.destination}",
        )
        md5 = answer.get("content_md5") if isinstance(answer, Mapping) else None
        return base64.b64encode(bytes(md5)).decode("ascii") if md5 else ""

    def staged_blocks(self, token: str) -> dict[int, int]:
        blob = self._blob
        try:
            _committed, uncommitted = blob.get_block_list("uncommitted")
        except ResourceNotFoundError as err:
            if _error_code(err) == "ContainerNotFound":
                raise translate(err, f"Get Block List of {self.destination}") from err
            return {}
        except (AzureError, OSError) as err:
            raise translate(err, f"Get Block List of {self.destination}") from err
        staged: dict[int, int] = {}
        for block in uncommitted:
            n = _part_of(token, str(block.id))
            if n is not None:
                staged[n] = int(block.size)
        return staged

    def complete(
        self, token: str, parts: Sequence[tuple[int, str]], *, content_md5: bytes | None = None
    ) -> None:
        """Put Block List; committing the same list again after a lost answer succeeds (the ids are
        looked up as "latest": uncommitted first, then committed)."""
        blob = self._blob
        blocks = [BlobBlock(block_id(token, n)) for n, _ in parts]
        settings = ContentSettings(content_md5=bytearray(content_md5)) if content_md5 else None
        conditions: dict[str, Any] = {} if self.overwrite else {"match_condition": MatchConditions.IfMissing}
        _call(
            lambda: blob.commit_block_list(blocks, content_settings=settings, **conditions),
            f"Put Block List of {self.destination}",
        )

    def abort(self, token: str) -> None:
        """Nothing to do: the service drops uncommitted blocks after 7 days, or at the next commit."""
        log.debug("%s: uncommitted blocks of upload %s are left to expire", self.destination, token)

    def delete(self) -> None:
        blob = self._blob
        _call(blob.delete_blob, f"delete {self.destination}")
