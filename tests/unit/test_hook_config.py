"""How a ``databricks`` Airflow connection maps to databricks-sdk configuration."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.connection import (
    EXTRA_FIELDS,
    EXTRAS_WITHOUT_FORM_FIELD,
    UNSUPPORTED_EXTRAS,
    config_kwargs,
)
from airflow_databricks_transfer.hooks.zerobus import zerobus_connection


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
    assert msi["auth_type"] == "azure-msi" and "azure_client_id" not in msi
    # a user-assigned identity is named by the official provider's extra, not by Login
    user = config_kwargs(
        "h", "ignored", None, {"use_azure_managed_identity": True, "azure_managed_identity_client_id": "c"}
    )
    assert user["azure_client_id"] == "c"


def test_basic_auth_and_timeouts() -> None:
    kw = config_kwargs("h", "user@example.com", "pw", {"retry_timeout_seconds": "30"})
    assert kw["auth_type"] == "basic" and kw["retry_timeout_seconds"] == 30


def test_missing_host_or_credentials_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="no host"):
        config_kwargs(None, None, "t", {})
    with pytest.raises(ValueError, match="no credentials"):
        config_kwargs("h", None, None, {})


def test_timeouts_from_the_form_and_empty_form_fields() -> None:
    kw = config_kwargs("h", None, "t", {"http_timeout_seconds": 45, "retry_timeout_seconds": None})
    assert kw["http_timeout_seconds"] == 45 and "retry_timeout_seconds" not in kw
    # a form saves untouched fields as null/false: they must not select a method
    empty = dict.fromkeys(EXTRA_FIELDS)
    empty.update(service_principal_oauth=False, use_azure_managed_identity=False)
    assert config_kwargs("h", None, "t", empty)["auth_type"] == "pat"


@pytest.mark.parametrize("extra", [{"use_default_azure_credential": True}, {"federated_k8s": True}])
def test_official_auth_methods_we_lack_are_refused_by_name(extra: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="does not support"):
        config_kwargs("h", "id", None, extra)
    with pytest.raises(ValueError, match="Kubernetes OIDC"):
        config_kwargs("h", "federated_k8s", None, {})


class _Recording(dict[str, Any]):
    def __init__(self, data: dict[str, Any], seen: set[str]) -> None:
        super().__init__(data)
        self.seen = seen

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


# (login, password, extra) as the official form (a plain form: Login, Password, Extra JSON) saves them
OFFICIAL_FORM_CONNECTIONS: list[tuple[str | None, str | None, dict[str, Any]]] = [
    (None, "dapi-pw", {}),
    ("", "dapi-pw", {}),
    ("someone", "pw", {"token": "dapi-extra"}),
    ("app-id", "secret", {"azure_tenant_id": "tenant", "azure_resource_id": "/subscriptions/s/x"}),
    (None, None, {"use_azure_managed_identity": True}),
    (None, None, {"use_azure_managed_identity": True, "azure_managed_identity_client_id": "mi"}),
    ("client-id", "secret", {"service_principal_oauth": True}),
    ("app-id", "secret", {"azure_tenant_id": "t", "service_principal_oauth": True}),  # tenant wins
    ("user@example.com", "pw", {}),
    ("client-id", "secret", {"use_default_azure_credential": True, "service_principal_oauth": True}),
    ("client-id", "secret", {"service_principal_oauth": True, "federated_k8s": True}),  # OAuth wins
    (None, None, {"federated_k8s": True}),
]


def official_method(login: str | None, password: str | None, extra: dict[str, Any]) -> str:
    """Which auth method the official DatabricksHook picks for a connection (its token methods stubbed)."""
    from airflow.models.connection import Connection
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    class Probe(DatabricksHook):
        def _get_aad_token(self, resource: str) -> str:
            has_msi = self.databricks_conn.extra_dejson.get("use_azure_managed_identity")
            return "AZURE-MSI" if has_msi and "azure_tenant_id" not in extra else "AZURE-SP"

        def _check_azure_metadata_service(self) -> None:
            return None

        def _get_aad_token_for_default_az_credential(self, resource: str) -> str:
            return "AZURE-DEFAULT"

        def _get_sp_token(self, resource: str) -> str:
            return "OAUTH-M2M"

        def _get_federated_databricks_token(self, resource: str) -> str:
            return "FEDERATED"

    hook = Probe()
    conn = Connection(
        conn_id="probe", conn_type="databricks", host="h", login=login, password=password, extra=extra
    )
    hook.__dict__["databricks_conn"] = conn
    token = hook._get_token()
    if token is None:
        return "basic"
    return {"AZURE-SP": "azure-client-secret", "AZURE-MSI": "azure-msi", "OAUTH-M2M": "oauth-m2m"}.get(
        token, token if token.isupper() else "pat"
    )


@pytest.mark.parametrize(("login", "password", "extra"), OFFICIAL_FORM_CONNECTIONS)
def test_same_field_meanings_as_the_official_hook(
    login: str | None, password: str | None, extra: dict[str, Any]
) -> None:
    """A connection made for the official provider selects the same auth method in our hook."""
    official = official_method(login, password, extra)
    try:
        ours = config_kwargs("https://h", login, password, extra)["auth_type"]
    except ValueError as err:
        assert "does not support" in str(err)
        assert official in ("AZURE-DEFAULT", "FEDERATED")  # refused by name, not misread
        return
    assert ours == official


def test_every_extra_the_hook_reads_has_a_form_field() -> None:
    seen: set[str] = set()
    for login, password, extra in OFFICIAL_FORM_CONNECTIONS:
        with contextlib.suppress(ValueError):
            config_kwargs("h", login, password, _Recording(extra, seen))
    config_kwargs("h", None, "t", _Recording({"http_timeout_seconds": 1, "retry_timeout_seconds": 1}, seen))
    # ZerobusHook reads the same connection, plus its endpoint
    zerobus_connection("c", "h", "id", "secret", _Recording({"zerobus_endpoint": "https://zb"}, seen))
    unsupported = set(UNSUPPORTED_EXTRAS)
    assert seen - unsupported == set(EXTRA_FIELDS) | set(EXTRAS_WITHOUT_FORM_FIELD)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in [*EXTRA_FIELDS, *EXTRAS_WITHOUT_FORM_FIELD]:
        assert f"`{name}`" in readme, name
