"""Connection forms this package registers only where the official provider does not (no Airflow
imports: read while Airflow discovers providers).

Airflow keeps the first registration of a connection type and visits ``airflow-databricks-transfer``
before ``apache-airflow-providers-*``, so registering ``databricks`` or ``wasb`` next to the official
provider would replace its form and Test button for every user of that provider.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from typing import Any


def installed(dist: str) -> bool:
    try:
        distribution(dist)
    except PackageNotFoundError:
        return False
    return True


def ui_behaviour(hidden: list[str], labels: dict[str, str], placeholders: dict[str, str]) -> dict[str, Any]:
    """The provider-info ``ui-field-behaviour``."""
    return {"hidden-fields": hidden, "relabeling": labels, "placeholders": placeholders}


def hook_behaviour(hidden: list[str], labels: dict[str, str], placeholders: dict[str, str]) -> dict[str, Any]:
    """The same in the shape of ``BaseHook.get_ui_field_behaviour``."""
    return {"hidden_fields": list(hidden), "relabeling": dict(labels), "placeholders": dict(placeholders)}


def registration(
    official_installed: bool,
    conn_type: str,
    hook_class: str,
    hook_name: str,
    fields: dict[str, dict[str, Any]],
    behaviour: dict[str, Any],
) -> list[dict[str, Any]]:
    """The provider-info ``connection-types`` entry, or none when the official provider owns the type."""
    if official_installed:
        return []
    return [
        {
            "connection-type": conn_type,
            "hook-class-name": hook_class,
            "hook-name": hook_name,
            "conn-fields": fields,
            "ui-field-behaviour": behaviour,
        }
    ]
