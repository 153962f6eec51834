"""What every transfer operator of this package shares: parsing of rendered template values, and the
errors that fail a task at once (no retry can fix them)."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from airflow_databricks_transfer.engine.errors import (
    AlreadyExistsError,
    AuthError,
    CheckpointError,
    ChecksumMismatchError,
    InvalidRequestError,
    MultipartUnavailableError,
    RemoteNotFoundError,
    SourceChangedError,
    VerificationError,
)
from airflow_databricks_transfer.ui_record import TransferRecorder, as_count, resumed_from

# Errors no retry can fix: fail the task at once instead of burning its retries.
NOT_RETRYABLE = (
    AuthError,
    AlreadyExistsError,
    InvalidRequestError,
    RemoteNotFoundError,
    CheckpointError,
    MultipartUnavailableError,
    # the local source is not the file the upload was planned for: a retry would meet the same file
    SourceChangedError,
    ChecksumMismatchError,  # the remote bytes are not what the caller expects: fetching again won't help
    VerificationError,  # the finished file failed a check (size, Content-MD5, its format)
    # a missing connection, or one without host or credentials (ValueError from the hook)
    AirflowNotFoundException,
    ValueError,
)


def as_int(value: Any, name: str) -> int:
    """Template-rendered numbers arrive as strings (e.g. from UI Params)."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise AirflowFailException(f"{name} must be a number, got {value!r}") from None


def as_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AirflowFailException(f"{name} must be a number, got {value!r}") from None


def opt_int(value: Any, name: str) -> int | None:
    if value in (None, "", "None"):
        return None
    return as_int(value, name)


def opt_str(value: Any) -> str | None:
    """A rendered optional string: an empty or "None" rendering means unset."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", "None") else text


def opt_float(value: Any, name: str) -> float | None:
    if value in (None, "", "None", 0, "0"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AirflowFailException(f"{name} must be a number, got {value!r}") from None


def fail_fast(err: Exception) -> None:
    """Turn an error no retry can fix into AirflowFailException (the task fails without retrying)."""
    if isinstance(err, NOT_RETRYABLE):
        raise AirflowFailException(f"{type(err).__name__}: {err}") from err


def as_bool(value: Any, name: str) -> bool:
    """A flag that may arrive rendered from a template or a UI Param ("True", "false", "1")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none"):
        return False
    raise AirflowFailException(f"{name} must be true or false, got {value!r}")


def as_patterns(value: Any, name: str) -> tuple[str, ...]:
    """Glob patterns from a list, or a rendered string: a JSON/Python list, or comma/newline separated."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        text = str(value).strip()
        if text in ("", "None", "[]"):
            return ()
        if text.startswith("["):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise AirflowFailException(f"{name} is not a list of patterns: {value!r}") from None
            items = [str(v) for v in parsed]
        else:
            items = text.replace("\n", ",").split(",")
    return tuple(p.strip() for p in items if p.strip())


class RecordsTries:
    """Operators that keep the per-try UI record (``<checkpoint_key>.ui``, see ui_record.py)."""

    _ui: TransferRecorder | None = None

    def _start_recording(
        self,
        context: Mapping[str, Any],
        key: str,
        *,
        kind: str,
        source: Any,
        destination: Any,
        unit: str,
        parallelism: Any = None,
        checkpoint: Any = None,
        discarded: str | None = None,
        cumulative: bool = False,
        **totals: int | None,
    ) -> TransferRecorder:
        """Open this try's entry (what ``checkpoint`` resumes, why one was ``discarded``)."""
        recorder = TransferRecorder(
            context,
            key,
            kind=kind,
            source=str(source),
            destination=str(destination),
            unit=unit,
            parallelism=as_count(parallelism),
            cumulative=cumulative,
        )
        recorder.start_try(discarded=discarded, **{**resumed_from(checkpoint), **totals})
        self._ui = recorder
        return recorder

    def _record_kill(self) -> None:
        """From ``on_kill``: the try's entry will say it was killed (written when ``execute`` unwinds)."""
        if self._ui is not None:
            self._ui.mark_killed()
