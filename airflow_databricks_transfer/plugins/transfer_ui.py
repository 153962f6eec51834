"""The "Transfer" tab and "Transfers" page: a FastAPI app mounted in the Airflow 3.3 api-server.

Endpoints (under the plugin's ``url_prefix``, :data:`URL_PREFIX`):

- ``GET /api/transfer?dag_id&run_id&task_id&map_index`` — one task instance: Airflow state and tries,
  the ``.ui`` record of the task state store, the unit map built from the checkpoint (see
  :mod:`airflow_databricks_transfer.plugins.transfer_view` for its encoding), bytes, rate, ETA, result,
  last error. ``map_index`` may be the literal ``{MAP_INDEX}`` the UI leaves in unmapped tabs (-> -1).
  Guarded by ``requires_access_dag("GET", TASK_INSTANCE)`` and ``requires_access_dag("GET", XCOM)``.
- ``GET /api/transfers?hours=24`` — running (and queued/retrying) task instances of this package's
  operators, and those that failed in the last ``hours``, across the DAGs whose task instances and
  XComs the user may read. "This package's" means: the task instance has a ``.ui`` record in the task
  state store, or a ``checkpoint`` XCom with this package's progress fields — the operators write both,
  so nothing depends on class names or on a DAG's code being importable by the api-server. Requires an
  authenticated user; each DAG is checked with the same auth-manager calls as the per-DAG endpoint.
- ``/static/...`` — the HTML, CSS and JS of the tab and the page. Public: they hold no data.

Airflow's ``AuthManagerDep`` reads ``request.app.state`` and does not work in a mounted sub-app; the
dependencies used here go through the global auth manager (see the plugin reference, section 2).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.models.dag import DagModel
from airflow.models.task_state_store import TaskStateStoreModel as TSS
from airflow.models.taskinstance import TaskInstance as TI
from airflow.models.taskinstancehistory import TaskInstanceHistory as TIH
from airflow.models.xcom import XComModel
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from airflow_databricks_transfer.plugins.transfer_view import (
    ACTIVE_STATES,
    CHECKPOINT_SCHEMA,
    UI_SCHEMA,
    UI_SUFFIX,
    build_payload,
    progress_summary,
    scrub,
    tab_path,
)

log = logging.getLogger(__name__)

URL_PREFIX = "/adt-transfer"
STATIC_DIR = Path(__file__).resolve().parent / "static"
XCOM_KEY = "checkpoint"
DEFAULT_CHECKPOINT_KEY = "checkpoint"
LIST_LIMIT = 500
# fields of this package's ``checkpoint`` XCom (a checkpoint's progress view, or the final summary)
_PROGRESS_KEYS = frozenset({"bytes_total", "records_acked", "phase", "percent"})

app = FastAPI(title="airflow-databricks-transfer UI", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

_READ_TI = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))
_READ_XCOM = Depends(requires_access_dag("GET", DagAccessEntity.XCOM))
_NO_STORE = {"Cache-Control": "no-store"}


def parse_map_index(value: str | None) -> int:
    """The UI leaves ``{MAP_INDEX}`` literal on unmapped task instances: that (or nothing) is -1."""
    if value is None:
        return -1
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text in ("", "{MAP_INDEX}", "null", "None"):
        return -1
    raise HTTPException(400, f"map_index must be an integer, not {value!r}")


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


# ------------------------------------------------------------------------------------------ reads
def _ti_row(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int) -> Any:
    return session.scalar(
        select(TI).where(
            TI.dag_id == dag_id, TI.run_id == run_id, TI.task_id == task_id, TI.map_index == map_index
        )
    )


def _ti_view(ti: Any) -> dict[str, Any]:
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "state": str(ti.state.value if hasattr(ti.state, "value") else ti.state) if ti.state else None,
        "try_number": ti.try_number,
        "max_tries": ti.max_tries,
        "operator": ti.operator,
        "start_date": _epoch(ti.start_date),
        "end_date": _epoch(ti.end_date),
        "hostname": ti.hostname or None,
    }


def _history(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[int, Any]:
    rows = session.execute(
        select(TIH.try_number, TIH.state, TIH.start_date, TIH.end_date).where(
            TIH.dag_id == dag_id, TIH.run_id == run_id, TIH.task_id == task_id, TIH.map_index == map_index
        )
    ).all()
    return {
        int(n): {
            "state": str(getattr(s, "value", s)) if s else None,
            "start_date": _epoch(a),
            "end_date": _epoch(b),
        }
        for n, s, a, b in rows
    }


def _store_values(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int, keys: Sequence[str]
) -> dict[str, Any]:
    if not keys:
        return {}
    rows = session.execute(
        select(TSS.key, TSS.value).where(
            TSS.dag_id == dag_id,
            TSS.run_id == run_id,
            TSS.task_id == task_id,
            TSS.map_index == map_index,
            TSS.key.in_(list(keys)),
        )
    ).all()
    return {k: _json(v) for k, v in rows}


def _ui_record(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int
) -> tuple[str | None, Mapping[str, Any] | None]:
    """(checkpoint key, record): the most recently updated ``<key>.ui`` value of this package."""
    rows = session.execute(
        select(TSS.key, TSS.value)
        .where(
            TSS.dag_id == dag_id,
            TSS.run_id == run_id,
            TSS.task_id == task_id,
            TSS.map_index == map_index,
            TSS.key.like(f"%{UI_SUFFIX}"),
        )
        .order_by(TSS.updated_at.desc())
    ).all()
    for key, value in rows:
        record = _json(value)
        if isinstance(record, Mapping) and record.get("schema") == UI_SCHEMA:
            return key[: -len(UI_SUFFIX)], record
    return None, None


def _checkpoint(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int, key: str
) -> tuple[Mapping[str, Any] | None, list[Any]]:
    """The checkpoint head and (uploads) its segment values, as stored; never sent to the browser."""
    head = _store_values(session, dag_id, run_id, task_id, map_index, [key]).get(key)
    if not isinstance(head, Mapping) or head.get("schema") != CHECKPOINT_SCHEMA:
        return None, []
    count = head.get("segments")
    if not isinstance(count, int) or not 0 < count <= 1000:
        return head, []
    names = [f"{key}.seg.{i}" for i in range(count)]
    values = _store_values(session, dag_id, run_id, task_id, map_index, names)
    return head, [values.get(n) for n in names]


def _xcom(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int
) -> Mapping[str, Any] | None:
    row = session.scalar(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == task_id,
            XComModel.map_index == map_index,
            XComModel.key == XCOM_KEY,
        )
    )
    if row is None:
        return None
    value = _json(XComModel.deserialize_value(row))
    return value if isinstance(value, Mapping) else None


def transfer_payload(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int
) -> dict[str, Any]:
    ti = _ti_row(session, dag_id, run_id, task_id, map_index)
    if ti is None:
        raise HTTPException(404, "task instance not found")
    key, record = _ui_record(session, dag_id, run_id, task_id, map_index)
    head, segments = _checkpoint(session, dag_id, run_id, task_id, map_index, key or DEFAULT_CHECKPOINT_KEY)
    payload = build_payload(
        ti=_ti_view(ti),
        history=_history(session, dag_id, run_id, task_id, map_index),
        record=record,
        checkpoint_head=head,
        checkpoint_segments=segments,
        xcom=_xcom(session, dag_id, run_id, task_id, map_index),
        now=time.time(),
    )
    payload["tab"] = tab_path(dag_id, run_id, task_id, map_index)
    return payload


# ------------------------------------------------------------------------------------------ routes
@app.get("/", include_in_schema=False)
def index() -> RedirectResponse:
    return RedirectResponse("static/transfers.html")


@app.get("/api/transfer", dependencies=[_READ_TI, _READ_XCOM])
def get_transfer(
    session: SessionDep,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    """One task instance's transfer (see the module docstring)."""
    payload = transfer_payload(session, dag_id, run_id, task_id, parse_map_index(map_index))
    return JSONResponse(payload, headers=_NO_STORE)


def _readable_dags(user: Any, dag_ids: set[str], session: Session) -> set[str]:
    """The DAGs whose task instances and XComs ``user`` may read (the per-DAG endpoint's checks)."""
    manager = get_auth_manager()
    teams = DagModel.get_dag_id_to_team_name_mapping(list(dag_ids), session=session) if dag_ids else {}
    allowed = set()
    for dag_id in dag_ids:
        details = DagDetails(id=dag_id, team_name=teams.get(dag_id))
        if all(
            manager.is_authorized_dag(method="GET", access_entity=entity, details=details, user=user)
            for entity in (DagAccessEntity.TASK_INSTANCE, DagAccessEntity.XCOM)
        ):
            allowed.add(dag_id)
    return allowed


@app.get("/api/transfers")
def list_transfers(
    session: SessionDep,
    user: GetUserDep,
    hours: Annotated[float, Query(gt=0, le=24 * 30)] = 24,
) -> JSONResponse:
    """Running and recently failed transfers the user may read, newest first, with their progress."""
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    wanted = or_(
        TI.state.in_(sorted(ACTIVE_STATES)),
        and_(TI.state == "failed", TI.end_date >= since),
    )
    ti_key = (TI.dag_id, TI.run_id, TI.task_id, TI.map_index)
    by_record = session.execute(
        select(TI, TSS.key, TSS.value)
        .join(
            TSS,
            and_(
                TSS.dag_id == TI.dag_id,
                TSS.run_id == TI.run_id,
                TSS.task_id == TI.task_id,
                TSS.map_index == TI.map_index,
            ),
        )
        .where(wanted, TSS.key.like(f"%{UI_SUFFIX}"))
        .order_by(TI.start_date.desc())
        .limit(LIST_LIMIT)
    ).all()
    by_xcom = session.execute(
        select(TI, XComModel)
        .join(
            XComModel,
            and_(
                XComModel.dag_id == TI.dag_id,
                XComModel.run_id == TI.run_id,
                XComModel.task_id == TI.task_id,
                XComModel.map_index == TI.map_index,
            ),
        )
        .where(wanted, XComModel.key == XCOM_KEY)
        .order_by(TI.start_date.desc())
        .limit(LIST_LIMIT)
    ).all()

    found: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for ti, _key, value in by_record:
        record = _json(value)
        if isinstance(record, Mapping) and record.get("schema") == UI_SCHEMA:
            found.setdefault(tuple(getattr(ti, c.key) for c in ti_key), {"ti": ti})["record"] = record
    for ti, xrow in by_xcom:
        xcom = _json(XComModel.deserialize_value(xrow))
        if isinstance(xcom, Mapping) and isinstance(xcom.get("kind"), str) and _PROGRESS_KEYS & set(xcom):
            found.setdefault(tuple(getattr(ti, c.key) for c in ti_key), {"ti": ti})["xcom"] = xcom

    allowed = _readable_dags(user, {k[0] for k in found}, session)
    items = []
    for (dag_id, run_id, task_id, map_index), got in found.items():
        if dag_id not in allowed:
            continue
        ti_view = _ti_view(got["ti"])
        payload = build_payload(
            ti=ti_view,
            history={},
            record=got.get("record"),
            checkpoint_head=None,
            checkpoint_segments=[],
            xcom=got.get("xcom"),
            now=time.time(),
        )
        items.append(
            {
                "ti": payload["ti"],
                **progress_summary(payload),
                "tab": tab_path(dag_id, run_id, task_id, map_index),
            }
        )
    items.sort(key=lambda i: i["ti"].get("start_date") or 0, reverse=True)
    return JSONResponse(scrub({"transfers": items, "hours": hours, "now": time.time()}), headers=_NO_STORE)
