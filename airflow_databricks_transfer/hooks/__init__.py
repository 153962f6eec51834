"""Airflow hooks: a connection in, a configured client out."""
