"""The ``databricks`` connection: its UI form, what each field means, and the databricks-sdk config it gives.

One source of truth: the provider info (the form Airflow shows), the hook's ``get_ui_field_behaviour``,
the README table and :func:`config_kwargs` all use the definitions below, and the tests check that every
extra :func:`config_kwargs` reads has a form field here. Field meanings follow the official
``apache-airflow-providers-databricks`` hook (``BaseDatabricksHook._get_token``), in the same order of
precedence, so one connection means the same thing to both providers. No Airflow imports: the provider
info is built from this module while Airflow discovers providers.
"""

from __future__ import annotations

from typing import Any, NoReturn

from airflow_databricks_transfer import connection_forms as forms

CONN_TYPE = "databricks"
OFFICIAL_PROVIDER = "apache-airflow-providers-databricks"
HOOK_CLASS = "airflow_databricks_transfer.hooks.files.DatabricksFilesHook"

# extra -> form field (Airflow "conn-fields": label, description, JSON schema; "password" marks a secret)
EXTRA_FIELDS: dict[str, dict[str, Any]] = {
    "token": {
        "label": "Personal access token (instead of Password)",
        "description": "Used before every other method when set. Prefer the Password field.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "service_principal_oauth": {
        "label": "OAuth M2M service principal",
        "description": "Login is the client ID, Password the OAuth secret.",
        "schema": {"type": ["boolean", "null"]},
    },
    "azure_tenant_id": {
        "label": "Azure tenant ID (Azure service principal)",
        "description": "Set for a Microsoft Entra ID service principal: Login is its application "
        "(client) ID, Password its secret.",
        "schema": {"type": ["string", "null"]},
    },
    "use_azure_managed_identity": {
        "label": "Azure managed identity",
        "description": "Authenticate as the managed identity of the machine running the task.",
        "schema": {"type": ["boolean", "null"]},
    },
    "azure_managed_identity_client_id": {
        "label": "Managed identity client ID (user-assigned)",
        "description": "Client ID of a user-assigned managed identity; empty for the system-assigned one.",
        "schema": {"type": ["string", "null"]},
    },
    "azure_resource_id": {
        "label": "Azure workspace resource ID",
        "description": "/subscriptions/.../workspaces/<name>; needed when the Azure identity is not a "
        "user of the workspace yet.",
        "schema": {"type": ["string", "null"]},
    },
    "retry_timeout_seconds": {
        "label": "Retry budget of API calls (s)",
        "description": "How long the databricks-sdk client retries a control call (default 300).",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "http_timeout_seconds": {
        "label": "HTTP timeout of API calls (s)",
        "description": (
            "Socket timeout of one control call, and how long a data transfer may make no progress "
            "(default 60)."
        ),
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "zerobus_endpoint": {
        "label": "Zerobus ingest endpoint (ZerobusHook)",
        "description": "The workspace's Zerobus server endpoint, e.g. https://<workspace-id>.zerobus.<region>"
        ".cloud.databricks.com; Login and Password are then the OAuth M2M client ID and secret.",
        "schema": {"type": ["string", "null"]},
    },
}

# Read but deliberately not in the form: the official hook's legacy override of the Host field.
EXTRAS_WITHOUT_FORM_FIELD: dict[str, str] = {"host": "overrides the Host field (as in the official hook)"}

# Official auth methods this package does not implement; refused by name rather than misread as another.
UNSUPPORTED_EXTRAS: dict[str, str] = {
    "use_default_azure_credential": "Azure DefaultAzureCredential",
    "federated_token_provider": "OIDC token federation",
    "federated_aws": "AWS IAM OIDC token federation",
    "federated_k8s": "Kubernetes OIDC token federation",
}
UNSUPPORTED_LOGINS: dict[str, str] = {
    "federated_aws": "AWS IAM OIDC token federation",
    "federated_k8s": "Kubernetes OIDC token federation",
}

LABELS = {"host": "Workspace URL", "login": "Login or client ID", "password": "Token or secret"}
PLACEHOLDERS = {
    "host": "https://adb-1234567890123456.7.azuredatabricks.net",
    "login": "empty for a token in Password",
}
HIDDEN_FIELDS = ["schema", "port"]

UI_FIELD_BEHAVIOUR: dict[str, Any] = forms.ui_behaviour(HIDDEN_FIELDS, LABELS, PLACEHOLDERS)


def official_provider_installed() -> bool:
    """True when apache-airflow-providers-databricks is installed (it then owns the ``databricks`` type)."""
    return forms.installed(OFFICIAL_PROVIDER)


def connection_types() -> list[dict[str, Any]]:
    """The provider-info ``connection-types``: ours only where the official provider does not register it
    (see ``connection_forms``)."""
    return forms.registration(
        official_provider_installed(), CONN_TYPE, HOOK_CLASS, "Databricks", EXTRA_FIELDS, UI_FIELD_BEHAVIOUR
    )


_TRUE = ("true", "1", "yes", "on")


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in _TRUE)


def _azure_resource(kwargs: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    if extra.get("azure_resource_id"):
        kwargs["azure_workspace_resource_id"] = extra["azure_resource_id"]
    return kwargs


def _unsupported(what: str) -> NoReturn:
    raise ValueError(
        f"the Databricks connection uses {what}, which airflow-databricks-transfer does not support: "
        "use a personal access token, OAuth M2M, an Azure service principal or a managed identity"
    )


def config_kwargs(
    host: str | None, login: str | None, password: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """databricks-sdk Config arguments for a ``databricks`` connection (pure, so it is unit-tested).

    The auth method is chosen as the official hook chooses it: extra token, then Password with an empty
    Login (or Login ``token``), Azure service principal, Azure managed identity, OAuth M2M, then basic.
    """
    host = extra.get("host") or host
    if not host:
        raise ValueError(
            "the Databricks connection has no host (set Host, e.g. https://adb-123.azuredatabricks.net)"
        )
    if "://" not in host:
        host = f"https://{host}"
    kwargs: dict[str, Any] = {"host": host.rstrip("/")}
    for key in ("retry_timeout_seconds", "http_timeout_seconds"):
        if extra.get(key) not in (None, ""):
            kwargs[key] = int(extra[key])
    if extra.get("token"):
        return {**kwargs, "token": extra["token"], "auth_type": "pat"}
    if password and (not login or login == "token"):
        return {**kwargs, "token": password, "auth_type": "pat"}
    if extra.get("azure_tenant_id"):
        if not (login and password):
            raise ValueError(
                "azure_tenant_id needs the application (client) ID in Login and the secret in Password"
            )
        kwargs.update(
            azure_client_id=login,
            azure_client_secret=password,
            azure_tenant_id=extra["azure_tenant_id"],
            auth_type="azure-client-secret",
        )
        return _azure_resource(kwargs, extra)
    if _flag(extra.get("use_azure_managed_identity")):
        kwargs.update(auth_type="azure-msi", azure_use_msi=True)
        if extra.get("azure_managed_identity_client_id"):
            kwargs["azure_client_id"] = extra["azure_managed_identity_client_id"]
        return _azure_resource(kwargs, extra)
    if extra.get("use_default_azure_credential"):  # the official hook tries it before OAuth M2M
        _unsupported(UNSUPPORTED_EXTRAS["use_default_azure_credential"])
    if _flag(extra.get("service_principal_oauth")):
        if not (login and password):
            raise ValueError(
                "service_principal_oauth needs the client ID in Login and the secret in Password"
            )
        return {**kwargs, "client_id": login, "client_secret": password, "auth_type": "oauth-m2m"}
    for key, what in UNSUPPORTED_EXTRAS.items():
        if extra.get(key) or UNSUPPORTED_LOGINS.get(login or "") == what:
            _unsupported(what)
    if login and password:
        return {**kwargs, "username": login, "password": password, "auth_type": "basic"}
    raise ValueError(
        "the Databricks connection has no credentials: put a personal access token in Password (or extra "
        '"token"), or set "service_principal_oauth": true with the client ID/secret in Login/Password'
    )


def hook_field_behaviour() -> dict[str, Any]:
    """The same behaviour in the shape of the (pre-3.2) ``BaseHook.get_ui_field_behaviour``."""
    return forms.hook_behaviour(HIDDEN_FIELDS, LABELS, PLACEHOLDERS)
