"""Apache Airflow provider for resumable, parallel, verified transfers into and out of Databricks."""

__version__ = "0.1.0"
