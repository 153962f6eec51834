"""``adt sync`` and ``adt upload DIR`` end to end: subprocesses against the standalone Files emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli_support import (
    TOKEN,
    VOLUME,
    Emulator,
    base_env,
    run_cli,
    standalone_emulator,
)

pytestmark = pytest.mark.integration
__all__ = ["standalone_emulator"]  # the module-scoped fixture


@pytest.fixture
def env(standalone_emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path, DATABRICKS_HOST=standalone_emulator.url, DATABRICKS_TOKEN=TOKEN)


def make_tree(root: Path) -> Path:
    for rel, text in {
        "a.txt": "alpha",
        "data/b #1.csv": "x,y\n1,2\n",
        "data/ünï cödé.txt": "unicode",
        "logs/skip.log": "excluded",
        ".hidden": "hidden",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def sync(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    proc = run_cli(env, "sync", *args, "--json")
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def test_sync_dry_run_then_upload_then_nothing_then_changes(
    env: dict[str, str], standalone_emulator: Emulator, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    target = f"{VOLUME}/sync-cli"
    remote = standalone_emulator.root / target.lstrip("/")

    rc, dry, _ = sync(env, str(tree), target, "--exclude", "logs/*", "--dry-run")
    assert rc == 0
    assert sorted(a["path"] for a in dry["actions"]) == ["a.txt", "data/b #1.csv", "data/ünï cödé.txt"]
    assert not remote.exists()  # nothing sent

    rc, first, err = sync(env, str(tree), target, "--exclude", "logs/*")
    assert rc == 0, err
    assert (first["uploaded"], first["failed"]) == (3, 0)
    assert (remote / "data" / "b #1.csv").read_text() == "x,y\n1,2\n"
    assert not (remote / "logs").exists() and not (remote / ".hidden").exists()
    assert f"sync to {target}: done" in err  # the overall progress line on a non-terminal stderr

    rc, second, _ = sync(env, str(tree), target, "--exclude", "logs/*")
    assert rc == 0
    assert (second["uploaded"], second["skipped"], second["files_hashed"]) == (0, 3, 0)

    (tree / "a.txt").write_text("alpha, changed")
    (tree / "data" / "ünï cödé.txt").unlink()
    human = run_cli(env, "sync", str(tree), target, "--exclude", "logs/*", "--delete")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"sync to {target}: uploaded 1 files")
    assert (remote / "a.txt").read_text() == "alpha, changed"
    assert not (remote / "data" / "ünï cödé.txt").exists()


def test_a_failing_file_is_reported_with_exit_code_1_while_the_others_land(
    env: dict[str, str], standalone_emulator: Emulator, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    target = f"{VOLUME}/sync-fail"
    standalone_emulator.control(
        "faults", {"route": "files.put", "path": f"{target}/a.txt", "status": 400, "times": None}
    )
    try:
        rc, result, _ = sync(env, str(tree), target)
    finally:
        standalone_emulator.control("faults", method="DELETE", body={})
    assert rc == 1
    assert result["failed"] == 1 and result["uploaded"] == 3
    assert [f["path"] for f in result["failures"]] == ["a.txt"]
    assert (standalone_emulator.root / target.lstrip("/") / "data" / "b #1.csv").exists()


def test_upload_of_a_directory_sends_every_file_every_time(env: dict[str, str], tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    target = f"{VOLUME}/tree-upload"
    for _ in range(2):
        proc = run_cli(env, "upload", str(tree), target, "--json", "--exclude", "logs/*")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["uploaded"] == 3
        assert {a["reason"] for a in result["actions"]} == {"forced"}


def test_on_a_terminal_progress_is_drawn_as_bars(env: dict[str, str], tmp_path: Path) -> None:
    """stderr a pseudo-terminal: rich bars (overall with the file count), not plain lines."""
    import os
    import pty
    import subprocess

    from tests.integration.cli_support import cli_command

    tree = make_tree(tmp_path / "tree")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        cli_command("sync", str(tree), f"{VOLUME}/tty", "--exclude", "logs/*"),
        env={**env, "COLUMNS": "160", "TERM": "xterm"},
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    text = drawn.decode(errors="replace")
    assert f"sync to {VOLUME}/tty" in text and "3/3 files" in text and "100%" in text
    assert ": done," not in text  # no plain progress lines on a terminal
    assert out.decode().startswith(f"sync to {VOLUME}/tty: uploaded 3 files")
