"""Argument types and the flag groups several verbs share."""

from __future__ import annotations

import argparse
import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def size(text: str) -> int:
    """``5MiB``, ``8M`` (decimal), ``1048576``: a byte count for ``--part-size`` and friends."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8MiB, 5M, 1048576)")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive: {text!r}")
    return value


def rate(text: str) -> int:
    """``10MiB/s`` or ``10MiB``: bytes per second for ``--bandwidth-limit``."""
    return size(text.removesuffix("/s"))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def common() -> argparse.ArgumentParser:
    """Flags every verb takes (given after the verb)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON document (the result) on stdout")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr (never secrets)")
    g.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default 5)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress display at all")
    return p


def databricks_auth() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group(
        "Databricks auth",
        "default: the Databricks SDK's chain (DATABRICKS_HOST/DATABRICKS_TOKEN, ~/.databrickscfg, ...)",
    )
    g.add_argument("--profile", help="a profile of ~/.databrickscfg (or of DATABRICKS_CONFIG_FILE)")
    g.add_argument("--host", help="the workspace URL (the token still comes from the SDK's chain)")
    g.add_argument(
        "--conn-id", dest="conn_id", help="an Airflow connection (type databricks) instead; imports Airflow"
    )
    return p


def transfer() -> argparse.ArgumentParser:
    """Engine knobs of single-file transfers."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("transfer")
    g.add_argument(
        "--state-dir",
        help="where checkpoints of interrupted transfers live (default $ADT_STATE_DIR, else "
        "$XDG_STATE_HOME/airflow-databricks-transfer or ~/.local/state/airflow-databricks-transfer)",
    )
    g.add_argument("--parallelism", type=positive_int, default=4, help="parts in flight per file (default 4)")
    g.add_argument("--part-size", type=size, help="multipart part / download chunk size (e.g. 16MiB)")
    g.add_argument("--bandwidth-limit", type=rate, metavar="RATE", help="e.g. 50MiB/s (per transfer)")
    g.add_argument("--no-resume", action="store_true", help="discard a stored checkpoint and start clean")
    g.add_argument("--dry-run", action="store_true", help="say what would be transferred; transfer nothing")
    return p
