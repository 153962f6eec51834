"""Local emulator of the Databricks Files API (Unity Catalog Volumes), faithful to how databricks-sdk
uses the wire."""

from airflow_databricks_transfer.testing.files_api.server import FilesApiEmulator, FilesApiServer
from airflow_databricks_transfer.testing.files_api.settings import EmulatorSettings

__all__ = ["EmulatorSettings", "FilesApiEmulator", "FilesApiServer"]
