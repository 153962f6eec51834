"""The package registers as an Airflow provider the way Airflow discovers providers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

from airflow_databricks_transfer.get_provider_info import get_provider_info


def test_entry_point_resolves_to_provider_info() -> None:
    eps = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.dist is not None and ep.dist.name == "airflow-databricks-transfer"
    ]
    assert len(eps) == 1
    info = eps[0].load()()
    # Airflow rejects a provider whose package-name differs from its distribution name
    assert info["package-name"] == distribution("airflow-databricks-transfer").metadata["Name"]
    assert info == get_provider_info()


def test_provider_info_matches_airflow_schema() -> None:
    import jsonschema
    from airflow import providers_manager

    schema = json.loads((Path(providers_manager.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_airflow_providers_list_shows_the_provider(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=True,
    )
    listed = {p["package_name"]: p for p in json.loads(proc.stdout)}
    assert "airflow-databricks-transfer" in listed
