"""Airflow operators of airflow-databricks-transfer."""
