"""The package registers as an Airflow provider the way Airflow discovers providers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer import azure_connection
from airflow_databricks_transfer.connection import (
    EXTRA_FIELDS,
    HIDDEN_FIELDS,
    HOOK_CLASS,
    LABELS,
    OFFICIAL_PROVIDER,
    official_provider_installed,
)
from airflow_databricks_transfer.get_provider_info import get_provider_info
from airflow_databricks_transfer.hooks.azure_blob import AzureBlobTransferHook
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook
from tests.venv_without import venv_without

OFFICIAL_AZURE = azure_connection.OFFICIAL_PROVIDER


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
    # all load side by side (the test extra installs the official Databricks and Azure providers)
    assert OFFICIAL_PROVIDER in listed and OFFICIAL_AZURE in listed


def test_provider_info_lists_the_azure_hook() -> None:
    info = get_provider_info()
    modules = [m for hook in info["hooks"] for m in hook["python-modules"]]
    assert AzureBlobTransferHook.__module__ in modules
    assert "Azure Blob Storage" in {i["integration-name"] for i in info["integrations"]}
    assert official_provider_installed() and azure_connection.official_provider_installed()
    assert info["connection-types"] == []  # both official providers are installed: their forms serve


# ---------------------------------------------------------------------------------------------- coexistence
PROBE = """
import json, sys
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
seen = {"providers": sorted(pm.providers)}
for conn_type in sys.argv[1:]:
    info = pm.hooks[conn_type]
    seen[conn_type] = {
        "hook": [info.hook_class_name, info.package_name, info.connection_testable] if info else None,
        "behaviour": pm.field_behaviours.get(conn_type),
        "widgets": {
            k: [v.package_name, v.field.get("schema", {}).get("title")]
            for k, v in pm.connection_form_widgets.items() if k.startswith(f"extra__{conn_type}__")
        },
    }
print("PROBE " + json.dumps(seen))
"""
CONN_TYPES = ("databricks", "wasb")


def probe_providers(python: str | Path, home: Path) -> tuple[dict[str, Any], str]:
    """What a fresh Airflow process (like the api-server) registers for our connection types."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    proc = subprocess.run(
        [str(python), "-c", PROBE, *CONN_TYPES],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE ") :]), proc.stdout + proc.stderr


# one process per environment for every connection type: each probe imports all of Airflow (slow)
@pytest.fixture(scope="module")
def with_official(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """The test environment: both official providers installed next to ours."""
    return probe_providers(sys.executable, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def without_official(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """A user without the official Databricks and Azure providers."""
    root = tmp_path_factory.mktemp("bare")
    return probe_providers(venv_without(root / "venv", OFFICIAL_PROVIDER, OFFICIAL_AZURE), root / "home")


def test_official_databricks_provider_owns_the_databricks_form(
    with_official: tuple[dict[str, Any], str],
) -> None:
    """With apache-airflow-providers-databricks installed, its hook and form serve ``databricks``."""
    assert official_provider_installed()  # the test extra installs it
    probe, output = with_official
    assert {"airflow-databricks-transfer", OFFICIAL_PROVIDER} <= set(probe["providers"])
    seen = probe["databricks"]
    assert seen["hook"] == [
        "airflow.providers.databricks.hooks.databricks.DatabricksHook",
        OFFICIAL_PROVIDER,
        True,
    ]
    # the official provider declares no field behaviour (a plain form); ours must not stand in for it
    assert seen["behaviour"] is None or seen["behaviour"]["relabeling"] != LABELS
    assert all(pkg != "airflow-databricks-transfer" for pkg, _ in seen["widgets"].values())
    assert "already registered" not in output


def test_without_the_official_provider_ours_is_the_databricks_form(
    without_official: tuple[dict[str, Any], str],
) -> None:
    """No official provider: our form, with a field (and label) for every extra the hook reads."""
    probe, output = without_official
    assert OFFICIAL_PROVIDER not in probe["providers"] and "airflow-databricks-transfer" in probe["providers"]
    seen = probe["databricks"]
    assert seen["hook"] == [HOOK_CLASS, "airflow-databricks-transfer", True]
    assert seen["behaviour"]["hidden_fields"] == HIDDEN_FIELDS
    hook_behaviour = DatabricksFilesHook.get_ui_field_behaviour()
    assert seen["behaviour"]["relabeling"] == LABELS == hook_behaviour["relabeling"]
    widgets = {k.removeprefix("extra__databricks__"): v for k, v in seen["widgets"].items()}
    assert widgets == {
        name: ["airflow-databricks-transfer", field["label"]] for name, field in EXTRA_FIELDS.items()
    }
    assert "already registered" not in output


def test_official_azure_provider_owns_the_wasb_form(with_official: tuple[dict[str, Any], str]) -> None:
    """With apache-airflow-providers-microsoft-azure installed, WasbHook and its form serve ``wasb``."""
    assert azure_connection.official_provider_installed()  # the test extra installs it
    probe, output = with_official
    assert {"airflow-databricks-transfer", OFFICIAL_AZURE} <= set(probe["providers"])
    seen = probe["wasb"]
    assert seen["hook"] == ["airflow.providers.microsoft.azure.hooks.wasb.WasbHook", OFFICIAL_AZURE, True]
    # the official behaviour (its placeholders), not ours; every extra widget is the official package's
    assert seen["behaviour"]["placeholders"]["host"] == "account url"
    assert seen["widgets"] and all(pkg == OFFICIAL_AZURE for pkg, _ in seen["widgets"].values())
    assert "already registered" not in output


def test_without_the_official_azure_provider_ours_is_the_wasb_form(
    without_official: tuple[dict[str, Any], str],
) -> None:
    """No official Azure provider: our ``wasb`` form, a field (and label) for every auth extra."""
    probe, output = without_official
    assert OFFICIAL_AZURE not in probe["providers"]
    seen = probe["wasb"]
    assert seen["hook"] == [azure_connection.HOOK_CLASS, "airflow-databricks-transfer", True]
    assert seen["behaviour"] == {
        "hidden_fields": azure_connection.HIDDEN_FIELDS,
        **AzureBlobTransferHook.get_ui_field_behaviour(),
    }
    widgets = {k.removeprefix("extra__wasb__"): v for k, v in seen["widgets"].items()}
    assert widgets == {
        name: ["airflow-databricks-transfer", field["label"]]
        for name, field in azure_connection.EXTRA_FIELDS.items()
    }
    assert "already registered" not in output
