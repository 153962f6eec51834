"""A virtualenv that sees this one's packages except some distributions, made in milliseconds.

The test environment installs the official Databricks provider (to test coexistence with it), but a
user without it gets this package's own ``databricks`` form; to test that form against the same code,
this builds a venv whose site-packages links every entry of ours except the named distributions'
``.dist-info`` folders. Airflow finds providers through that metadata (entry points), so a provider
whose metadata is missing is not installed as far as Airflow and ``importlib.metadata`` can tell.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def venv_without(dest: Path, *distributions: str) -> Path:
    """Create (once) a venv at ``dest`` without ``distributions``; returns its python."""
    python = dest / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    hidden = {_canonical(d) for d in distributions}
    for entry in ours.iterdir():
        if entry.name.endswith(".dist-info") and _canonical(entry.name.split("-")[0]) in hidden:
            continue
        target = theirs / entry.name
        if not target.exists():
            target.symlink_to(entry)
    return python
