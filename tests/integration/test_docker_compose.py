"""docker/ cannot be run here (no Docker engine), so check what can be: the YAML, the paths it
references, and that the emulator command it runs works outside Docker."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "docker-compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_parses_and_has_the_stack() -> None:
    services = _compose()["services"]
    expected = {
        "postgres",
        "files-api-emulator",
        "azurite",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    }
    assert expected <= set(services)
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        env = services[name]["environment"]
        assert env["AIRFLOW_CONN_DATABRICKS_DEFAULT"].startswith("{")
        assert "../dags:/opt/airflow/dags" in services[name]["volumes"]


def test_every_referenced_path_exists() -> None:
    services = _compose()["services"]
    for svc in services.values():
        build = svc.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context.is_dir()
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file()
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY"):
                    sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
                    for src in sources:
                        assert (context / src).exists(), f"{src} (COPY in {dockerfile.name}) is missing"
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (DOCKER / host).exists(), f"{host} mounted by the compose file is missing"


def test_the_emulator_command_of_the_compose_file_runs(tmp_path: Path) -> None:
    command = shlex.split(_compose()["services"]["files-api-emulator"]["command"])
    assert command[:3] == ["python", "-m", "airflow_databricks_transfer.testing.files_api"]
    args = command[3:]
    # same command, but on loopback, a free port and a temp root
    for flag, value in (("--host", "127.0.0.1"), ("--port", "0"), ("--root", str(tmp_path / "v"))):
        args[args.index(flag) + 1] = value
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_databricks_transfer.testing.files_api",
            *args,
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        token = args[args.index("--token") + 1]
        resp = requests.get(
            f"{url}/api/2.1/unity-catalog/volumes/main.default.landing",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert resp.status_code == 200 and resp.json()["full_name"] == "main.default.landing"
        # presigned URLs point at the service name other containers use
        up = requests.post(
            f"{url}/api/2.0/fs/files/Volumes/main/default/landing/x?action=initiate-upload",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).json()
        urls = requests.post(
            f"{url}/api/2.0/fs/create-upload-part-urls",
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
            json={
                "path": "/Volumes/main/default/landing/x",
                "count": 1,
                "start_part_number": 1,
                "session_token": up["multipart_upload"]["session_token"],
                "expire_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
            },
        ).json()
        assert urls["upload_part_urls"][0]["url"].startswith("http://files-api-emulator:8765/_presigned/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_azurite_service_matches_the_tested_one() -> None:
    """The compose Azurite is the version the tests pin, run the way the tests run it (never --loose), and
    the wasb connection the DAGs use points at it."""
    import json

    from airflow_databricks_transfer.azure_connection import client_spec

    compose = _compose()
    azurite = compose["services"]["azurite"]
    pinned = json.loads((REPO / "package.json").read_text())["devDependencies"]["azurite"]
    assert azurite["image"].endswith(f":{pinned}")
    args = shlex.split(azurite["command"])
    assert "--loose" not in args and "--skipApiVersionCheck" in args
    conn = json.loads(compose["x-airflow"]["environment"]["AIRFLOW_CONN_WASB_DEFAULT"])
    spec = client_spec("wasb_default", None, None, None, conn["extra"])
    assert spec.mode == "connection_string"
    assert "BlobEndpoint=http://azurite:10000/devstoreaccount1;" in conn["extra"]["connection_string"]
