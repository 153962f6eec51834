"""The Transfer tab in a real browser, against a real Airflow 3.3 stack and a real transfer.

A paced upload (6 parts of 5 MiB at 1 MiB/s, two at a time) runs on LocalExecutor; the tab (an iframe of the
plugin's static page) shows its map filling; the task process is SIGKILLed; the tab shows try 1 failed
(closed from Airflow's state, since a killed process cannot close its entry); try 2's row shows what it
resumed from try 1's checkpoint; the map completes. A mapped upload's tab, the Transfers page and a
viewer user (in a dark theme) are covered too. Debian's ``chromium`` via Playwright; screenshots in
the stack's AIRFLOW_HOME under ``screenshots/``.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, FrameLocator, Page, expect, sync_playwright

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import make_file

from .stack import REPO, AirflowStack, databricks_connection_env, wait_for

pytestmark = pytest.mark.airflow

MiB = 1024 * 1024
DAG_ID = "adt_ui_paced"
DAGS = Path(__file__).resolve().parent / "dags_ui"
VOL = "/Volumes/main/default/landing"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIZE = 30 * MiB
PARTS = 6


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesApiEmulator]:
    with FilesApiEmulator(tmp_path_factory.mktemp("files-root"), volumes=["main.default.landing"]) as emu:
        yield emu


@pytest.fixture(scope="module")
def stack(emulator: FilesApiEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("airflow-ui-browser")
    env = {
        **databricks_connection_env(emulator),
        "PYTHONPATH": str(REPO),  # this worktree's operators and plugin
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
    }
    with AirflowStack(home, DAGS, env) as st:
        st.wait_for_dag(DAG_ID)
        yield st


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is missing: run scripts/bootstrap.sh (apt-get install chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def login(
    browser: Browser, stack: AirflowStack, user: str, theme: Literal["light", "dark"] = "light"
) -> Page:
    passwords = {"admin": "admin", **_generated_passwords(stack)}
    context = browser.new_context(viewport={"width": 1400, "height": 1500}, color_scheme=theme)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{stack.url}/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(passwords[user])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign in")).to_have_count(0)
    return page


def _generated_passwords(stack: AirflowStack) -> dict[str, str]:
    return dict(json.loads((stack.home / "passwords.json").read_text()))


def shot(stack: AirflowStack, page: Page, name: str) -> None:
    folder = stack.home / "screenshots"
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def tab_url(stack: AirflowStack, run_id: str, task_id: str, map_index: int | None = None) -> str:
    mapped = f"/mapped/{map_index}" if map_index is not None else ""
    return f"{stack.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{task_id}{mapped}/plugin/transfer"


def frame(page: Page) -> FrameLocator:
    return page.frame_locator("iframe[src*='adt-transfer/static/index.html']")


def map_attr(tab: FrameLocator, name: str) -> int:
    return int(tab.locator("#map").get_attribute(name) or "0")


def test_tab_follows_a_killed_and_resumed_upload(
    stack: AirflowStack, emulator: FilesApiEmulator, browser: Browser, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "paced.bin", SIZE, seed=7)
    small = [make_file(tmp_path / f"small{i}.bin", 6 * MiB, seed=10 + i) for i in range(2)]
    run_id = stack.trigger(
        DAG_ID,
        {
            "source": str(src),
            "volume_path": f"{VOL}/ui-browser/{uuid.uuid4().hex}.bin",
            "small_sources": [str(p) for p in small],
            "volume_dir": f"{VOL}/ui-browser/mapped-{uuid.uuid4().hex}",
            "bandwidth_mib_s": 1,
        },
    )
    page = login(browser, stack, "admin")
    page.goto(tab_url(stack, run_id, "upload"))
    tab = frame(page)
    expect(tab.locator("#map")).to_have_attribute("data-count", str(PARTS), timeout=180_000)
    expect(tab.locator("#state")).to_have_attribute("data-state", "running")

    # the map fills: some parts done, not all, while try 1 runs
    def filling() -> bool:
        return 1 <= map_attr(tab, "data-done") < PARTS and map_attr(tab, "data-inflight") >= 1

    wait_for(filling, 120, "the map to show finished and in-flight parts")
    expect(tab.locator("#map")).to_have_attribute("data-encoding", "bitmap")
    shot(stack, page, "transfer-01-filling")
    done_before_kill = map_attr(tab, "data-done")

    # the Transfers page (navigation) lists the running upload, with a link to its tab
    nav = page.context.new_page()
    nav.goto(f"{stack.url}/plugin/transfers")
    row = nav.frame_locator("iframe[src*='adt-transfer/static/transfers.html']").locator("tr.transfer-row")
    link = row.get_by_role("link", name=f"{DAG_ID} / upload")
    expect(link).to_be_visible()
    assert (link.get_attribute("href") or "").endswith(tab_url(stack, run_id, "upload")[len(stack.url) :])
    shot(stack, nav, "transfer-00-transfers-page")
    nav.close()
    assert int(stack.task_instance(DAG_ID, run_id, "upload")["try_number"]) == 1

    stack.kill_task(DAG_ID, run_id, "upload")
    try1 = tab.locator("tr.try-row[data-try='1']")
    expect(try1).to_have_attribute("data-state", "failed", timeout=120_000)
    shot(stack, page, "transfer-02-try1-failed")

    # try 2 resumes what try 1's checkpoint held, and the map completes
    try2 = tab.locator("tr.try-row[data-try='2']")
    expect(try2).to_be_visible(timeout=120_000)
    resumed = try2.locator("td.resumed")
    expect(resumed).to_have_text(re.compile(r"^[1-9]\d* \("), timeout=60_000)
    resumed_parts = int((resumed.text_content() or "0").split(" ")[0])
    assert done_before_kill <= resumed_parts < PARTS
    expect(tab.locator("#state")).to_have_attribute("data-state", "success", timeout=180_000)
    expect(tab.locator("#map")).to_have_attribute("data-done", str(PARTS))
    expect(try2).to_have_attribute("data-state", "success")
    expect(try1).to_have_attribute("data-state", "failed")
    expect(tab.locator("#result")).to_contain_text("bytes")
    expect(tab.locator("#live")).to_have_text("finished: not refreshing")
    shot(stack, page, "transfer-03-done")
    state = stack.wait_for_run(DAG_ID, run_id, timeout=300)
    assert state == "success", stack.run_report(DAG_ID, run_id)

    # a mapped task instance's tab
    page.goto(tab_url(stack, run_id, "mapped_upload", 1))
    mapped = frame(page)
    expect(mapped.locator("#title")).to_contain_text("[1]")
    expect(mapped.locator("#state")).to_have_attribute("data-state", "success")
    expect(mapped.locator("#map")).to_have_attribute("data-done", "2")
    shot(stack, page, "transfer-04-mapped")
    page.context.close()

    # a viewer sees the same tab (read-only access is enough); in a dark theme the tab is dark too
    viewer = login(browser, stack, "viewer", theme="dark")
    viewer.goto(tab_url(stack, run_id, "upload"))
    seen = frame(viewer)
    expect(seen.locator("#state")).to_have_attribute("data-state", "success")
    background = seen.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
    assert background == "rgb(17, 20, 24)", background
    expect(seen.locator("tr.try-row")).to_have_count(2)
    expect(seen.locator("tr.try-row[data-try='1']")).to_have_attribute("data-state", "failed")
    shot(stack, viewer, "transfer-05-viewer")
    viewer.context.close()
