"""How a ``databricks`` Airflow connection maps to databricks-sdk configuration."""

from __future__ import annotations

import pytest

from airflow_databricks_transfer.hooks.files import config_kwargs


def test_token_in_password_with_empty_or_token_login() -> None:
    for login in (None, "", "token"):
        kw = config_kwargs("adb-1.azuredatabricks.net", login, "dapi123", {})
        assert kw == {"host": "https://adb-1.azuredatabricks.net", "token": "dapi123", "auth_type": "pat"}


def test_token_in_extra_wins_and_host_in_extra_is_used() -> None:
    kw = config_kwargs("ignored", "someone", "pw", {"token": "dapi9", "host": "http://127.0.0.1:8765/"})
    assert kw["host"] == "http://127.0.0.1:8765" and kw["token"] == "dapi9"


def test_service_principal_oauth() -> None:
    kw = config_kwargs(
        "https://x.cloud.databricks.com", "client-id", "secret", {"service_principal_oauth": "true"}
    )
    assert (
        kw["auth_type"] == "oauth-m2m" and kw["client_id"] == "client-id" and kw["client_secret"] == "secret"
    )
    with pytest.raises(ValueError, match="client ID"):
        config_kwargs("h", None, None, {"service_principal_oauth": True})


def test_azure_service_principal_and_managed_identity() -> None:
    kw = config_kwargs("h", "app-id", "s3cret", {"azure_tenant_id": "tenant", "azure_resource_id": "/sub/x"})
    assert kw["auth_type"] == "azure-client-secret" and kw["azure_tenant_id"] == "tenant"
    assert kw["azure_workspace_resource_id"] == "/sub/x"
    msi = config_kwargs("h", None, None, {"use_azure_managed_identity": True})
    assert msi["auth_type"] == "azure-msi"


def test_basic_auth_and_timeouts() -> None:
    kw = config_kwargs("h", "user@example.com", "pw", {"retry_timeout_seconds": "30"})
    assert kw["auth_type"] == "basic" and kw["retry_timeout_seconds"] == 30


def test_missing_host_or_credentials_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="no host"):
        config_kwargs(None, None, "t", {})
    with pytest.raises(ValueError, match="no credentials"):
        config_kwargs("h", None, None, {})
