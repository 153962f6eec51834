"""Airflow sensors of airflow-databricks-transfer."""
