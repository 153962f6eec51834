"""The ``adt`` command line end to end: a subprocess against the standalone Files emulator (real sockets)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.cli_support import (
    TOKEN,
    VOLUME,
    Emulator,
    base_env,
    cli_command,
    error_line,
    run_cli,
    standalone_emulator,
)
from tests.integration.conftest import make_file

pytestmark = pytest.mark.integration
__all__ = ["standalone_emulator"]  # the module-scoped fixture


@pytest.fixture
def env(standalone_emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path, DATABRICKS_HOST=standalone_emulator.url, DATABRICKS_TOKEN=TOKEN)


def test_upload_list_download_round_trip_with_json_and_progress(env: dict[str, str], tmp_path: Path) -> None:
    src = make_file(tmp_path / "report 2026 #1.bin", 300 * 1024, seed=1)
    dest = f"{VOLUME}/round trip/report 2026 #1.bin"

    up = run_cli(env, "upload", str(src), dest, "--json", "--verbose")
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert result["destination"] == dest
    assert result["bytes"] == 300 * 1024
    # not a terminal: plain progress lines on stderr, the final one included
    assert f"upload {dest}: done" in up.stderr

    listing = run_cli(env, "list-remote", VOLUME, "-r", "--json")
    assert listing.returncode == 0, listing.stderr
    entries = {e["path"]: e for e in json.loads(listing.stdout)["entries"]}
    assert entries[f"{VOLUME}/round trip/"]["is_directory"] is True
    assert entries[dest]["size"] == 300 * 1024
    assert entries[dest]["last_modified"].startswith("20")

    out = tmp_path / "back.bin"
    down = run_cli(env, "download", dest, str(out), "--verbose")
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == src.read_bytes()
    assert f"download {dest}: done" in down.stderr
    assert down.stdout.startswith(f"{dest} -> {out}: {300 * 1024} bytes in ")

    for proc in (up, listing, down):
        assert TOKEN not in proc.stdout + proc.stderr
        # --verbose logs the SDK's answers, which carry presigned URLs: never their query (the signature)
        assert re.search(r"_presigned/\w+\?(?!<redacted>)", proc.stderr) is None


def test_profile_from_a_config_file(standalone_emulator: Emulator, tmp_path: Path) -> None:
    cfg = tmp_path / "databrickscfg"
    cfg.write_text(f"[emu]\nhost = {standalone_emulator.url}\ntoken = {TOKEN}\n")
    env = base_env(tmp_path, DATABRICKS_CONFIG_FILE=str(cfg))
    src = make_file(tmp_path / "p.bin", 10_000, seed=2)
    up = run_cli(env, "upload", str(src), f"{VOLUME}/profile/", "--profile", "emu", "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["destination"] == f"{VOLUME}/profile/p.bin"
    human = run_cli(env, "list-remote", f"{VOLUME}/profile", "--profile", "emu")
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines()[0].split() == [
        "10000",
        human.stdout.split()[1],
        f"{VOLUME}/profile/p.bin",
    ]
    assert human.stdout.splitlines()[-1] == "1 files, 0 directories, 10000 bytes"


def test_create_volume(env: dict[str, str], standalone_emulator: Emulator) -> None:
    args = ("create-volume", "--catalog", "main", "--schema", "default", "--volume", "made_by_cli")
    made = run_cli(env, *args, "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["created"] is True

    again = run_cli(env, *args)
    assert again.returncode == 1
    assert "already exists" in error_line(again) and "--exist-ok" in error_line(again)

    ok = run_cli(env, *args, "--exist-ok", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) | {"volume": None} == {
        "created": False,
        "full_name": "main.default.made_by_cli",
        "path": "/Volumes/main/default/made_by_cli",
        "volume": None,
    }
    assert (standalone_emulator.root / "Volumes" / "main" / "default" / "made_by_cli").is_dir()


def test_exit_codes_and_one_line_errors(env: dict[str, str], tmp_path: Path) -> None:
    src = make_file(tmp_path / "e.bin", 1000, seed=4)

    wrong_local = run_cli(env, "upload", str(tmp_path / "missing.bin"), f"{VOLUME}/e.bin")
    assert wrong_local.returncode == 1
    assert error_line(wrong_local) == f"adt: error: {tmp_path / 'missing.bin'}: no such file or directory"

    no_volume = run_cli(env, "upload", str(src), "/Volumes/main/default/absent/e.bin")
    assert no_volume.returncode == 1
    assert error_line(no_volume).startswith("adt: error: not found:")
    assert "absent" in error_line(no_volume)

    bad_token = run_cli({**env, "DATABRICKS_TOKEN": "dapi-wrong-token"}, "list-remote", VOLUME)
    assert bad_token.returncode == 1
    assert error_line(bad_token).startswith("adt: error: authentication failed:")
    assert "dapi-wrong-token" not in bad_token.stdout + bad_token.stderr

    no_auth = run_cli(
        {k: v for k, v in env.items() if not k.startswith("DATABRICKS_")}, "list-remote", VOLUME
    )
    assert no_auth.returncode == 1
    assert error_line(no_auth).startswith("adt: error: Databricks authentication is not configured")

    usage = run_cli(env, "upload", str(src))
    assert usage.returncode == 2
    bad_size = run_cli(env, "upload", str(src), f"{VOLUME}/e.bin", "--part-size", "lots")
    assert bad_size.returncode == 2
    for proc in (wrong_local, no_volume, bad_token, no_auth):
        assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr


def test_dry_run_uploads_nothing(env: dict[str, str], standalone_emulator: Emulator, tmp_path: Path) -> None:
    src = make_file(tmp_path / "d.bin", 2048, seed=5)
    before = standalone_emulator.last_seq()
    dry = run_cli(env, "upload", str(src), f"{VOLUME}/dry/d.bin", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True
    writes = [r for r in standalone_emulator.requests(before) if r["method"] in ("PUT", "POST")]
    assert writes == []


def test_without_conn_id_airflow_is_never_imported(env: dict[str, str], tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from airflow_databricks_transfer.cli.main import main\n"
        "import airflow_databricks_transfer.cli.azure_auth, airflow_databricks_transfer.cli.sync\n"
        "import airflow_databricks_transfer.cli.ingest, airflow_databricks_transfer.cli.volumes\n"
        f"rc = main(['list-remote', {VOLUME!r}, '--json'])\n"
        "loaded = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print('AIRFLOW-MODULES', loaded, rc)\n"
    )
    env = {**env, "AIRFLOW_HOME": str(tmp_path / "airflow-home")}
    proc = subprocess.run(
        [*cli_command()[:1], "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "AIRFLOW-MODULES [] 0" in proc.stdout
    assert not (tmp_path / "home" / "airflow").exists()
    assert not (tmp_path / "airflow-home").exists()


def test_conn_id_uses_an_airflow_connection(standalone_emulator: Emulator, tmp_path: Path) -> None:
    conn = json.dumps({"conn_type": "databricks", "host": standalone_emulator.url, "password": TOKEN})
    env = base_env(tmp_path, AIRFLOW_CONN_CLI_EMU=conn, AIRFLOW_HOME=str(tmp_path / "airflow"))
    ok = run_cli(env, "list-remote", VOLUME, "--conn-id", "cli_emu", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["path"] == VOLUME
    missing = run_cli(env, "list-remote", VOLUME, "--conn-id", "no_such_conn")
    assert missing.returncode == 1
    assert "'no_such_conn' is not defined" in error_line(missing)
