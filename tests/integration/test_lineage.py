"""Lineage with the OpenLineage provider installed: what the hook reports to Airflow's hook lineage
collector after real transfers, how OpenLineage names it, and the operators' OpenLineage facets.

The collector is a process-wide singleton chosen when the first hook asks for it (a real one only when a
hook lineage reader, here OpenLineage's, is enabled), so the hook part runs in a fresh interpreter with
OpenLineage configured, against the emulator of this test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from airflow_databricks_transfer.operators.files import (
    DatabricksVolumeToLocalFilesystemOperator,
    LocalFilesystemToDatabricksVolumeOperator,
)
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import REPO, MiB, make_file

pytestmark = pytest.mark.integration
VOL = "/Volumes/main/default/landing"

DRIVER = textwrap.dedent(
    """
    import json, sys
    from airflow.providers.openlineage.utils.utils import translate_airflow_asset
    from airflow.sdk.lineage import get_hook_lineage_collector
    from airflow_databricks_transfer.hooks.files import DatabricksFilesHook

    src, remote, out = sys.argv[1:4]
    hook = DatabricksFilesHook("dbx_lineage")
    hook.upload_file(src, remote)
    hook.download_file(remote, out)
    collected = get_hook_lineage_collector().collected_assets

    def describe(info):
        ol = translate_airflow_asset(info.asset, info.context)
        return {
            "uri": info.asset.uri,
            "context": type(info.context).__name__,
            "openlineage": None if ol is None else [ol.namespace, ol.name],
        }

    print(json.dumps({
        "collector": type(get_hook_lineage_collector()).__name__,
        "inputs": [describe(i) for i in collected.inputs],
        "outputs": [describe(o) for o in collected.outputs],
    }))
    """
)


@pytest.fixture
def conn_env(files_api_emulator: FilesApiEmulator, tmp_path: Path) -> dict[str, str]:
    conn = {"conn_type": "databricks", "host": files_api_emulator.url, "password": files_api_emulator.token}
    return {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_DBX_LINEAGE": json.dumps(conn),
    }


def test_hook_reports_local_files_and_volume_paths_to_the_collector(
    files_api_emulator: FilesApiEmulator, conn_env: dict[str, str], tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src.bin", 2 * MiB, seed=5)
    out = tmp_path / "out.bin"
    remote = f"{VOL}/lineage/src.bin"
    env = {
        **os.environ,
        **conn_env,
        "PYTHONPATH": str(REPO),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "console"}),
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(src), remote, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.read_bytes() == src.read_bytes()

    host = urlsplit(files_api_emulator.url).netloc.lower()
    volume = f"dbfs://{host}{remote}"
    assert report["collector"] == "HookLineageCollector"  # OpenLineage enabled a real collector
    inputs = {i["uri"]: i for i in report["inputs"]}
    outputs = {o["uri"]: o for o in report["outputs"]}
    assert set(inputs) == {f"file://{src}", volume}  # upload read src, download read the Volume file
    assert set(outputs) == {volume, f"file://{out}"}
    assert {i["context"] for i in report["inputs"] + report["outputs"]} == {"DatabricksFilesHook"}
    # OpenLineage names them per its naming spec: DBFS namespace dbfs://{workspace}, local files "file"
    assert inputs[volume]["openlineage"] == [f"dbfs://{host}", remote]
    assert inputs[f"file://{src}"]["openlineage"] == ["file", str(src)]
    assert outputs[f"file://{out}"]["openlineage"] == ["file", str(out)]


def test_without_a_lineage_reader_the_hook_still_transfers(
    files_api_emulator: FilesApiEmulator, conn_env: dict[str, str], tmp_path: Path
) -> None:
    """OpenLineage installed but not configured: a no-op collector, and reporting must not break."""
    src = make_file(tmp_path / "src.bin", MiB, seed=6)
    out = tmp_path / "out.bin"
    env = {**os.environ, **conn_env, "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith(("OPENLINEAGE", "AIRFLOW__OPENLINEAGE"))}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(src), f"{VOL}/lineage/plain.bin", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"collector": "NoOpCollector", "inputs": [], "outputs": []}
    assert out.read_bytes() == src.read_bytes()


@pytest.fixture
def conn(conn_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in conn_env.items():
        monkeypatch.setenv(key, value)
    return "dbx_lineage"


def test_operators_return_openlineage_facets(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    host = urlsplit(files_api_emulator.url).netloc.lower()
    up = LocalFilesystemToDatabricksVolumeOperator(
        task_id="up", databricks_conn_id=conn, local_path="data/x.bin", volume_path=f"{VOL}/a/x.bin"
    )
    facets = up.get_openlineage_facets_on_complete(task_instance=None)
    assert [(d.namespace, d.name) for d in facets.inputs] == [("file", os.path.abspath("data/x.bin"))]
    assert [(d.namespace, d.name) for d in facets.outputs] == [(f"dbfs://{host}", f"{VOL}/a/x.bin")]

    down = DatabricksVolumeToLocalFilesystemOperator(
        task_id="down", databricks_conn_id=conn, volume_path=f"{VOL}/a/x.bin", local_path="/tmp/y.bin"
    )
    facets = down.get_openlineage_facets_on_complete(task_instance=None)
    assert [(d.namespace, d.name) for d in facets.inputs] == [(f"dbfs://{host}", f"{VOL}/a/x.bin")]
    assert [(d.namespace, d.name) for d in facets.outputs] == [("file", "/tmp/y.bin")]
