"""Local emulator of Databricks Zerobus Ingest (``databricks.zerobus.Zerobus/EphemeralStream``) that
writes real Delta tables, faithful to how databricks-zerobus-ingest-sdk 1.10 uses the wire."""

from airflow_databricks_transfer.testing.zerobus.schema import Column, RecordError, TableSchema
from airflow_databricks_transfer.testing.zerobus.server import ZerobusEmulator, ZerobusServer
from airflow_databricks_transfer.testing.zerobus.settings import ZerobusSettings

__all__ = ["Column", "RecordError", "TableSchema", "ZerobusEmulator", "ZerobusServer", "ZerobusSettings"]
