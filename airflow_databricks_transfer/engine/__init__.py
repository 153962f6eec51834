"""The pure transfer engine: stdlib and wire clients only, never ``import airflow``."""
