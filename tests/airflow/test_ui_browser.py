"""What a user sees in the Airflow UI, in a real browser against a real Airflow 3.3 stack.

One stack (api-server, scheduler, dag-processor, triggerer; LocalExecutor, SQLite) runs from a venv
without the official Databricks provider, so the ``databricks`` connection form is this package's own
(with the official provider the form is the official one; tests/unit/test_provider.py checks that).
Debian's ``chromium`` is driven by Playwright (``scripts/bootstrap.sh`` installs it; nothing is
downloaded). Screenshots land in the stack's AIRFLOW_HOME, under ``screenshots/``.

Also here, without a browser: the example DAGs triggered through the REST API the Airflow 3 way
(``"logical_date": null``), and the connection-test request exactly as the connections list sends it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from airflow_databricks_transfer.connection import CONN_TYPE, EXTRA_FIELDS, LABELS, OFFICIAL_PROVIDER
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.venv_without import venv_without

from .conftest import EXAMPLE_DAGS
from .stack import AirflowStack

pytestmark = pytest.mark.airflow

MiB = 1024 * 1024
LANDING = "/Volumes/main/default/landing"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MANUAL_DAGS = ("databricks_volume_roundtrip", "databricks_volume_sensor")


@pytest.fixture(scope="module")
def ui_stack(
    tmp_path_factory: pytest.TempPathFactory, adt_emulator: FilesApiEmulator
) -> Iterator[AirflowStack]:
    python = venv_without(tmp_path_factory.mktemp("venv") / "without-official", OFFICIAL_PROVIDER)
    home = tmp_path_factory.mktemp("airflow-ui")
    env = {
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",  # the Test button is disabled by default
        "AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(
            {"conn_type": CONN_TYPE, "host": adt_emulator.url, "password": adt_emulator.token}
        ),
        "ADT_DEMO_DIR": str(home / "demo"),
    }
    with AirflowStack(home, EXAMPLE_DAGS, env, airflow=(str(python), "-m", "airflow")) as stack:
        for dag_id in MANUAL_DAGS:
            stack.wait_for_dag(dag_id)  # parsed and unpaused, as the trigger form does
        yield stack


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is missing: run scripts/bootstrap.sh (apt-get install chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, ui_stack: AirflowStack) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{ui_stack.url}/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("admin")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign in")).to_have_count(0)
    yield page
    context.close()


def shot(stack: AirflowStack, page: Page, name: str) -> None:
    folder = stack.home / "screenshots"
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def param_input(dialog: Locator, title: str) -> Locator:
    """The input of a trigger-form field by its title (text Params' inputs carry no accessible name)."""
    label = dialog.locator("label").filter(has_text=re.compile(rf"^{re.escape(title)}\s*\*?\s*$"))
    return label.locator("xpath=ancestor::*[@role='group'][1]//*[self::input or self::textarea]").first


def runs(stack: AirflowStack, dag_id: str) -> list[dict[str, Any]]:
    return list(stack.api("GET", f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"])


# ---------------------------------------------------------------------------------------------- browser
def test_connection_form_creates_and_tests_a_databricks_connection(
    page: Page, ui_stack: AirflowStack, adt_emulator: FilesApiEmulator
) -> None:
    page.goto(f"{ui_stack.url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Connection ID").fill("emulator_ui")
    dialog.get_by_role("combobox").fill("Databricks")
    page.keyboard.press("Enter")
    # our labels; Port and Schema hidden
    dialog.get_by_label(LABELS["host"]).fill(adt_emulator.url)
    dialog.get_by_label(LABELS["password"], exact=True).fill(adt_emulator.token)
    expect(dialog.get_by_label(LABELS["login"])).to_be_visible()
    expect(dialog.get_by_label("Port", exact=True)).to_have_count(0)
    dialog.get_by_role("button", name="Extra Fields", exact=True).click()
    for field in EXTRA_FIELDS.values():  # a field, labelled as the hook labels it, for every extra
        expect(dialog.get_by_text(field["label"], exact=True)).to_be_visible()
    shot(ui_stack, page, "connection-form")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0)

    saved = ui_stack.api("GET", "/connections/emulator_ui")
    assert (saved["conn_type"], saved["host"], saved["port"]) == (CONN_TYPE, adt_emulator.url, None)

    row = page.get_by_role("row").filter(has_text="emulator_ui")
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")) as answer:
        row.get_by_role("button", name="Test Connection").click()
    response = answer.value
    sent = json.loads(response.request.post_data or "{}")
    assert sent["port"] == 0 and sent["password"] == "***"  # what Airflow 3.3's list sends
    assert response.status == 200, response.text()
    assert response.json() == {"status": True, "message": "Connected: Unity Catalog answered"}
    expect(page.get_by_text("Connected: Unity Catalog answered")).to_be_visible()
    shot(ui_stack, page, "connection-tested")


def test_trigger_form_runs_the_roundtrip_example(page: Page, ui_stack: AirflowStack, tmp_path: Path) -> None:
    dag_id = "databricks_volume_roundtrip"
    page.goto(f"{ui_stack.url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    # titles, not raw Param names; only what has no sensible empty value is required
    expected = {
        "File size (MiB)": True,
        "Local folder": True,
        "Volume folder": True,
        "Parallel connections": True,
        "Upload part size (MiB)": False,
        "Bandwidth limit (MiB/s)": False,
    }
    required = {t: param_input(dialog, t).evaluate("input => input.required") for t in expected}
    assert required == expected
    expect(dialog.get_by_text("size_mib", exact=True)).to_have_count(0)
    expect(dialog.get_by_text("Optional. Empty or 0: unlimited.")).to_be_visible()
    param_input(dialog, "File size (MiB)").fill("12")
    param_input(dialog, "Local folder").fill(str(tmp_path))
    param_input(dialog, "Volume folder").fill(f"{LANDING}/ui/roundtrip")
    param_input(dialog, "Upload part size (MiB)").fill("5")
    shot(ui_stack, page, "trigger-form")
    with page.expect_response(lambda r: r.request.method == "POST" and "/dagRuns" in r.url) as answer:
        dialog.get_by_role("button", name="Trigger").click()
    run_id = answer.value.json()["dag_run_id"]

    state = ui_stack.wait_for_run(dag_id, run_id, timeout=300)
    assert state == "success", ui_stack.run_report(dag_id, run_id)
    upload = ui_stack.xcom(dag_id, run_id, "upload")
    assert (upload["bytes"], upload["parts"]) == (12 * MiB, 3)
    assert upload["destination"].startswith(f"{LANDING}/ui/roundtrip/")
    assert (tmp_path / "roundtrip.bin").stat().st_size == 12 * MiB
    page.goto(f"{ui_stack.url}/dags/{dag_id}/runs/{quote(run_id, safe='')}")
    expect(page.get_by_text("Success").first).to_be_visible()
    shot(ui_stack, page, "roundtrip-run")


# ---------------------------------------------------------------------------------------------- REST
@pytest.mark.parametrize("dag_id", MANUAL_DAGS)
def test_example_dag_runs_when_triggered_without_logical_date(
    ui_stack: AirflowStack, tmp_path: Path, dag_id: str
) -> None:
    """``"logical_date": null`` (the Airflow 3 default): no ``ds`` in the context, the run must not care."""
    conf: dict[str, Any] = {"local_dir": str(tmp_path)}
    if dag_id == "databricks_volume_roundtrip":
        conf.update(size_mib=6, part_size_mib=5, volume_dir=f"{LANDING}/rest/roundtrip")
    else:
        conf.update(delay_s=1, drop_dir=f"{LANDING}/rest/drop")
    run_id = ui_stack.trigger(dag_id, conf)
    run = ui_stack.api("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
    assert run["logical_date"] is None
    state = ui_stack.wait_for_run(dag_id, run_id, timeout=300)
    assert state == "success", ui_stack.run_report(dag_id, run_id)
    day = run["run_after"][:10]
    if dag_id == "databricks_volume_roundtrip":
        dest = ui_stack.xcom(dag_id, run_id, "upload")["destination"]
        assert dest == f"{LANDING}/rest/roundtrip/{day}/source.bin"
    else:
        assert sorted(ui_stack.xcom(dag_id, run_id, "wait_for_drop")) == [
            f"{LANDING}/rest/drop/{day}/customers.csv",
            f"{LANDING}/rest/drop/{day}/orders.csv",
        ]
    # unscheduled: unpausing it started no run of its own, so nothing queued before the user's runs
    assert {r["run_type"] for r in runs(ui_stack, dag_id)} == {"manual"}


def test_scheduled_example_is_a_separate_dag(ui_stack: AirflowStack) -> None:
    dags = {d["dag_id"]: d for d in ui_stack.api("GET", "/dags?limit=100")["dags"]}
    assert dags["databricks_volume_roundtrip_daily"]["timetable_summary"] == "0 0 * * *"  # @daily
    for dag_id in MANUAL_DAGS:
        assert dags[dag_id]["timetable_summary"] is None, dags[dag_id]


def test_connection_test_accepts_the_body_the_connections_list_sends(
    ui_stack: AirflowStack, adt_emulator: FilesApiEmulator
) -> None:
    """Airflow 3.3.2 answers this body (port 0 for a NULL port, masked password) with 400 unless fixed."""
    ui_stack.api(
        "POST",
        "/connections",
        {
            "connection_id": "emulator_rest",
            "conn_type": CONN_TYPE,
            "host": adt_emulator.url,
            "password": adt_emulator.token,
        },
    )
    listed = ui_stack.api("GET", "/connections/emulator_rest")
    assert listed["port"] is None and listed["password"] == "***"
    body = {**listed, "port": 0, "login": "", "schema": "", "description": "", "extra": "{}"}
    resp = requests.post(
        f"{ui_stack.url}/api/v2/connections/test", json=body, headers=ui_stack._headers(), timeout=60
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": True, "message": "Connected: Unity Catalog answered"}
    # a real change of destination with the stored secret is still refused
    moved = requests.post(
        f"{ui_stack.url}/api/v2/connections/test",
        json={**body, "port": 1},
        headers=ui_stack._headers(),
        timeout=60,
    )
    assert moved.status_code == 400
