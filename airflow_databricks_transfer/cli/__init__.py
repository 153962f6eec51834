"""The ``adt`` command line (``python -m airflow_databricks_transfer``): every transfer outside a DAG.

Without ``--conn-id`` nothing here imports Airflow (slow to import, and it creates ``~/airflow``): auth
comes from the Databricks SDK's own chain, checkpoints from a local state directory.
"""
