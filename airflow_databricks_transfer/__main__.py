"""``python -m airflow_databricks_transfer``: the command line (see ``cli/main.py``)."""

from __future__ import annotations

import sys

from airflow_databricks_transfer.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
