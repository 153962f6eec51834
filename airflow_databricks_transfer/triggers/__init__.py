"""Airflow triggers of airflow-databricks-transfer."""
