"""Start and stop a real Airflow 3.3 stack (api-server, scheduler, dag-processor, triggerer, and Celery
workers when asked) inside a test, and talk to it through its public REST API.

Every component runs in its own process group so the stack, and any task process it forked, can be
stopped as a whole; ``stop`` leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import requests

if TYPE_CHECKING:
    from airflow_databricks_transfer.testing.files_api import FilesApiEmulator

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException, ValueError, KeyError):
            last = check()
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def databricks_connection_env(emu: FilesApiEmulator) -> dict[str, str]:
    """``databricks_default`` pointing at the Files API emulator, for the stack's environment."""
    conn = {
        "conn_type": "databricks",
        "host": emu.url,
        "password": emu.token,
        "extra": {"retry_timeout_seconds": 30},
    }
    return {"AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(conn)}


@dataclass
class AirflowStack:
    home: Path
    dags_folder: Path
    env_extra: Mapping[str, str] = field(default_factory=dict)
    executor: str = "LocalExecutor"
    sql_alchemy_conn: str | None = None
    celery_workers: tuple[str, ...] = ()
    airflow: tuple[str, ...] = (AIRFLOW,)  # e.g. (python, "-m", "airflow") to run another venv's Airflow
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)
    _token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": "adt-test-jwt-secret-" + self.home.name,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "3",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            **self.env_extra,
        }
        if self.sql_alchemy_conn:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.sql_alchemy_conn
        return env

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, name: str, args: list[str], extra_env: Mapping[str, str] | None = None) -> None:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            [*self.airflow, *args],
            env={**self.env(), **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, timeout: float = 180) -> AirflowStack:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": "admin"}))
        migrate = subprocess.run(
            [*self.airflow, "db", "migrate"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(
                f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"
            )
        self._spawn("api-server", ["api-server", "--port", str(self.port), "--workers", "1"])
        self._spawn("scheduler", ["scheduler"])
        self._spawn("dag-processor", ["dag-processor"])
        self._spawn("triggerer", ["triggerer"])
        for i, worker in enumerate(self.celery_workers):
            self._spawn(
                worker,
                ["celery", "worker", "--celery-hostname", f"{worker}@%h", "--concurrency", "1"],
                {"WORKER_NAME": worker, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port() + i)},
            )

        def healthy() -> bool:
            self._check_alive()
            h = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return all(h.get(p, {}).get("status") == "healthy" for p in parts)

        wait_for(healthy, timeout, "a healthy Airflow stack")
        return self

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if name not in self.killed and proc.poll() is not None:
                raise RuntimeError(
                    f"airflow {name} exited with {proc.returncode}; see {self.home / (name + '.log')}"
                )

    def kill_group(self, name: str) -> None:
        """SIGKILL a component and everything in its process group (a worker dying whole)."""
        proc = self.procs[name]
        self.killed.add(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def kill_task(self, dag_id: str, run_id: str, task_id: str) -> int:
        """SIGKILL the running try's task process (its supervisor lives on and reports it failed)."""
        pid = int(self.task_instance(dag_id, run_id, task_id)["pid"])
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():  # whatever ignored SIGTERM, and task processes they forked
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()

    def __enter__(self) -> AirflowStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST
    def _headers(self) -> dict[str, str]:
        if self._token is None:
            resp = requests.post(
                f"{self.url}/auth/token", json={"username": "admin", "password": "admin"}, timeout=10
            )
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def api(self, method: str, path: str, body: Any = None) -> Any:
        resp = requests.request(
            method, f"{self.url}/api/v2{path}", json=body, headers=self._headers(), timeout=30
        )
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> None:
        wait_for(lambda: self.api("GET", f"/dags/{dag_id}"), timeout, f"DAG {dag_id} to be parsed")
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf)})
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        def done() -> str | None:
            self._check_alive()
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return str(wait_for(done, timeout, f"run {run_id} of {dag_id} to finish", interval=1))

    def task_path(self, dag_id: str, run_id: str, task_id: str) -> str:
        return f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.api("GET", self.task_path(dag_id, run_id, task_id)))

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        data = self.api("GET", self.task_path(dag_id, run_id, task_id) + "/tries")
        return list(data["task_instances"])

    def state_store(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        data = self.api("GET", self.task_path(dag_id, run_id, task_id) + "/state-store")
        return {item["key"]: item["value"] for item in data.get("task_state_store", [])}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        data = self.api("GET", self.task_path(dag_id, run_id, task_id) + f"/xcomEntries/{key}")
        value = data["value"]
        return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value

    def clear(self, dag_id: str, run_id: str, task_id: str) -> None:
        self.api(
            "POST",
            f"/dags/{dag_id}/clearTaskInstances",
            {
                "dry_run": False,
                "task_ids": [task_id],
                "dag_run_id": run_id,
                "only_failed": False,
                "reset_dag_runs": True,
            },
        )

    def run_report(self, dag_id: str, run_id: str, tail: int = 40) -> str:
        """What a failed run did: each task's state and the end of every try's log, and the components'
        lines naming the run (heartbeat timeouts, executor events), so a failure in CI explains itself."""
        lines = []
        with contextlib.suppress(requests.RequestException, ValueError, KeyError):
            tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
            lines += [f"{t['task_id']}: {t['state']} (try {t['try_number']})" for t in tis["task_instances"]]
        run_dir = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for path in sorted(run_dir.rglob("*")) if run_dir.is_dir() else []:
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-tail:]
                lines += [f"--- {path.relative_to(run_dir)}", *text]
        for name in ("scheduler", "triggerer"):
            log = self.home / f"{name}.log"
            if log.is_file():
                hits = [line for line in log.read_text(errors="replace").splitlines() if run_id in line]
                lines += [f"--- {name}.log lines naming the run", *hits[-tail:]]
        return "\n".join(lines)

    def logs_text(self) -> str:
        """Every task log file of this stack, concatenated (for leak checks)."""
        chunks = []
        for path in sorted((self.home / "logs").rglob("*")):
            if path.is_file():
                chunks.append(path.read_text(errors="replace"))
        return "\n".join(chunks)


# ---------------------------------------------------------------- CeleryExecutor on PostgreSQL and Redis
PG_HOSTPORT = "127.0.0.1:5432"
REDIS_HOSTPORT = "127.0.0.1:6379"


def _services_or_skip() -> None:
    """PostgreSQL and Redis of this machine (started before every session and CI run)."""
    import psycopg2
    import redis

    try:
        psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        ).close()
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"the CeleryExecutor test needs PostgreSQL on {PG_HOSTPORT} and Redis on :6379 ({err})")


@contextlib.contextmanager
def celery_stack(
    home: Path,
    dags_folder: Path,
    env_extra: Mapping[str, str],
    *,
    workers: tuple[str, ...] = ("w1", "w2"),
    redis_db: int = 7,
) -> Iterator[AirflowStack]:
    """A started CeleryExecutor stack on a fresh PostgreSQL database (dropped afterwards) and a flushed
    Redis database, with one-slot workers named ``workers``."""
    import psycopg2
    import redis

    _services_or_skip()
    db = f"adt_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {db}")
    redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
    env = {
        **env_extra,
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOSTPORT}/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@{PG_HOSTPORT}/{db}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
    }
    stack = AirflowStack(
        home,
        dags_folder,
        env,
        executor="CeleryExecutor",
        sql_alchemy_conn=f"postgresql+psycopg2://postgres@{PG_HOSTPORT}/{db}",
        celery_workers=workers,
    )
    try:
        with stack:
            yield stack
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
