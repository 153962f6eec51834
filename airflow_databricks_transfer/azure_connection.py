"""The ``wasb`` connection: its UI form, what each field means, and the BlobServiceClient it gives.

Field meanings and their order of precedence are those of the official Azure provider's
``WasbHook.get_conn`` (apache-airflow-providers-microsoft-azure 15.2.1), reproduced without importing
it, so one connection means the same thing to both providers:

1. extra ``connection_string``: ``BlobServiceClient.from_connection_string`` (Azurite, key or SAS in it);
2. extra ``tenant_id``: a service principal (Login = client ID, Password = secret, extra
   ``client_secret_auth_config`` = further ``ClientSecretCredential`` arguments);
3. ``public_read=True`` on the hook: anonymous access to public containers;
4. extra ``shared_access_key``: the account key;
5. extra ``sas_token``: a full ``https://...?sv=...`` SAS URL, else a SAS token;
6. Password (the account key), else extra ``account_key``, else ``DefaultAzureCredential`` (managed
   identity, workload identity, environment, Azure CLI...).

The account URL is Host as given (``http://127.0.0.1:10000/devstoreaccount1`` reaches Azurite), else
``https://<Login>.blob.core.windows.net/``. Extras may also carry the legacy ``extra__wasb__<name>`` keys.

Where this differs on purpose:

* SDK retries are off (``retry_total=0``): the transfer engine retries every call with its own policy.
  The SDK's default waits 15-24 s per connection retry (measured) and would multiply with the engine's.
* Only the extras in :data:`CLIENT_OPTIONS` reach the client. WasbHook passes *every* extra, which also
  lets ``transport``, ``_pipeline`` or ``retry_policy`` replace the pipeline this module configures;
  the other keys are reported by name (never value) in :attr:`ClientSpec.ignored_extras`.
* A missing account (no Host, no Login) or a service principal without ID/secret is an error naming the
  connection and what to set, instead of a request to ``https://None.blob.core.windows.net/``.

No Airflow imports: the provider info is built from this module while Airflow discovers providers, and
the Azure SDK is imported only when a client is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse, urlunparse

from airflow_databricks_transfer import connection_forms as forms

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

CONN_TYPE = "wasb"
OFFICIAL_PROVIDER = "apache-airflow-providers-microsoft-azure"
HOOK_CLASS = "airflow_databricks_transfer.hooks.azure_blob.AzureBlobTransferHook"
LEGACY_PREFIX = "extra__wasb__"

# Defaults of azure-storage-blob (_shared/constants.py), set explicitly so an SDK change cannot move them.
CONNECTION_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 60.0

_SECRET = {"type": ["string", "null"], "format": "password"}
_TEXT = {"type": ["string", "null"]}

# extra -> form field (Airflow "conn-fields"); the same names and meanings as the official form
EXTRA_FIELDS: dict[str, dict[str, Any]] = {
    "connection_string": {
        "label": "Blob Storage Connection String (optional)",
        "description": "Used before every other method when set (e.g. Azurite's connection string).",
        "schema": _SECRET,
    },
    "shared_access_key": {
        "label": "Blob Storage Shared Access Key (optional)",
        "description": "The storage account key; Host or Login names the account.",
        "schema": _SECRET,
    },
    "tenant_id": {
        "label": "Tenant Id (Active Directory Auth)",
        "description": "Service principal: Login is its application (client) ID, Password its secret.",
        "schema": _TEXT,
    },
    "sas_token": {
        "label": "SAS Token (optional)",
        "description": "A SAS token (sv=...&sig=...), or a full https:// SAS URL of the account.",
        "schema": _SECRET,
    },
    "managed_identity_client_id": {
        "label": "Managed Identity Client ID",
        "description": "DefaultAzureCredential: used only together with the workload identity tenant.",
        "schema": _TEXT,
    },
    "workload_identity_tenant_id": {
        "label": "Workload Identity Tenant ID",
        "description": "DefaultAzureCredential: used only together with the managed identity client ID.",
        "schema": _TEXT,
    },
    "connection_timeout": {
        "label": "Connect timeout (s)",
        "description": f"Seconds to open a connection (default {CONNECTION_TIMEOUT_S:g}).",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
    },
    "read_timeout": {
        "label": "Read timeout (s)",
        "description": f"Seconds a response may stay silent (default {READ_TIMEOUT_S:g}).",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
    },
}

# Read but deliberately not in the form (as in the official form).
EXTRAS_WITHOUT_FORM_FIELD: dict[str, str] = {
    "account_key": "the account key when Password is empty",
    "client_secret_auth_config": "further ClientSecretCredential arguments (a JSON object)",
}
AUTH_EXTRAS = (frozenset(EXTRA_FIELDS) - {"connection_timeout", "read_timeout"}) | set(
    EXTRAS_WITHOUT_FORM_FIELD
)

# connection_verify: true/false, or the path of a CA bundle (as requests' ``verify``)
_BOOL_OR_PATH = object

# BlobServiceClient keyword arguments a connection may set, with the type each is coerced to (form values
# and env-var JSON may carry numbers as strings). Everything that shapes the pipeline (transport, policies,
# retries) is left out on purpose: see the module docstring.
CLIENT_OPTIONS: dict[str, type] = {
    "connection_timeout": float,
    "read_timeout": float,
    "api_version": str,
    "audience": str,
    "secondary_hostname": str,
    "user_agent": str,
    "max_single_put_size": int,
    "max_block_size": int,
    "min_large_block_upload_threshold": int,
    "max_single_get_size": int,
    "max_chunk_get_size": int,
    "max_page_size": int,
    "use_byte_buffer": bool,
    "connection_verify": _BOOL_OR_PATH,
}

LABELS = {
    "login": "Blob Storage Login (optional)",
    "password": "Blob Storage Key (optional)",
    "host": "Account URL (Active Directory Auth)",
}
PLACEHOLDERS = {
    "login": "account name",
    "password": "secret",
    "host": "https://<account>.blob.core.windows.net",
}
HIDDEN_FIELDS = ["schema", "port"]

UI_FIELD_BEHAVIOUR: dict[str, Any] = forms.ui_behaviour(HIDDEN_FIELDS, LABELS, PLACEHOLDERS)


def official_provider_installed() -> bool:
    """True when apache-airflow-providers-microsoft-azure is installed (it then owns the ``wasb`` type)."""
    return forms.installed(OFFICIAL_PROVIDER)


def connection_types() -> list[dict[str, Any]]:
    """The provider-info ``connection-types``: ours only where the official provider does not register it
    (see ``connection_forms``)."""
    return forms.registration(
        official_provider_installed(),
        CONN_TYPE,
        HOOK_CLASS,
        "Azure Blob Storage",
        EXTRA_FIELDS,
        UI_FIELD_BEHAVIOUR,
    )


def hook_field_behaviour() -> dict[str, Any]:
    """The same behaviour in the shape of ``BaseHook.get_ui_field_behaviour``."""
    return forms.hook_behaviour(HIDDEN_FIELDS, LABELS, PLACEHOLDERS)


# ------------------------------------------------------------------------------------------ client spec
Mode = Literal[
    "connection_string",
    "service_principal",
    "anonymous",
    "shared_access_key",
    "sas_url",
    "sas_token",
    "account_key",
    "default_credential",
]


@dataclass(frozen=True)
class ClientSpec:
    """How to build the client: the auth mode and its inputs. ``repr`` shows no secret (nor a SAS URL)."""

    conn_id: str
    mode: Mode
    account_url: str = field(repr=False)  # a SAS URL in mode "sas_url"
    secret: str | None = field(default=None, repr=False)  # key, SAS token, client secret or conn string
    client_id: str | None = None
    tenant_id: str | None = None
    credential_options: dict[str, Any] = field(default_factory=dict, repr=False)
    client_options: dict[str, Any] = field(default_factory=dict)
    ignored_extras: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        """The account URL without its query (where a SAS URL keeps its signature): safe to log."""
        return urlunparse(urlparse(self.account_url)._replace(query="", fragment=""))


def _field(extra: dict[str, Any], name: str) -> Any:
    """As WasbHook._get_field: a present key wins even when empty (then None); else the legacy key."""
    if name in extra:
        return extra[name] or None
    return extra.get(f"{LEGACY_PREFIX}{name}") or None


def account_url(conn_id: str, host: str | None, login: str | None) -> str:
    """Host as given, else ``https://<login>.blob.core.windows.net/``: WasbHook's parse_blob_account_url.

    Like it, a Host without a scheme gets ``https://``, a Host without a dot names only the account (so
    the URL is built from Login) and the first host label is cut to 24 characters. Unlike it, a Host with
    a port (``localhost:10000``) is kept, and no account at all is an error rather than ``None.blob...``.
    """
    if not host and not login:
        raise ValueError(
            f"the wasb connection {conn_id!r} names no storage account: set Host to the account URL "
            "(https://<account>.blob.core.windows.net), Login to the account name, or put a "
            "connection_string in Extra"
        )
    url = host or f"https://{login}.blob.core.windows.net/"
    parsed = urlparse(url)
    if not parsed.scheme:
        parsed = urlparse(f"https://{url}")
    netloc = parsed.netloc
    if "." not in netloc and parsed.port is None:
        if not login:
            raise ValueError(
                f"the wasb connection {conn_id!r} has Host {host!r}, which is not a URL: set Host to the "
                "account URL (https://<account>.blob.core.windows.net) or Login to the account name"
            )
        netloc = f"{login}.blob.core.windows.net/"
    labels = netloc.split(".")
    labels[0] = labels[0][:24]
    return urlunparse(parsed._replace(netloc=".".join(labels)))


def _client_options(conn_id: str, extra: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    options: dict[str, Any] = {"connection_timeout": CONNECTION_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S}
    ignored: list[str] = []
    for key, value in extra.items():
        name = key.removeprefix(LEGACY_PREFIX)
        if name in AUTH_EXTRAS or (name != key and name in extra):  # a plain key beats its legacy form
            continue
        kind = CLIENT_OPTIONS.get(name)
        if kind is None:
            ignored.append(key)
            continue
        if value in (None, ""):
            continue
        options[name] = _coerce(conn_id, name, value, kind)
    for name in ("connection_timeout", "read_timeout"):
        if options[name] <= 0:
            raise ValueError(f"the wasb connection {conn_id!r} has {name}={options[name]}: it must be > 0")
    return options, tuple(sorted(ignored))


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _coerce(conn_id: str, name: str, value: Any, kind: type) -> Any:
    if kind is _BOOL_OR_PATH and isinstance(value, str) and value.strip().lower() not in _TRUE + _FALSE:
        return value
    if kind in (bool, _BOOL_OR_PATH):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE + _FALSE:
            return text in _TRUE
    else:
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise ValueError(
        f"the wasb connection {conn_id!r} has extra {name}={value!r}: expected {_kind_name(kind)}"
    )


def _kind_name(kind: type) -> str:
    return "true, false or a CA bundle path" if kind is _BOOL_OR_PATH else kind.__name__


def client_spec(
    conn_id: str,
    host: str | None,
    login: str | None,
    password: str | None,
    extra: dict[str, Any],
    *,
    public_read: bool = False,
) -> ClientSpec:
    """Choose the auth mode of a ``wasb`` connection, in WasbHook's order (pure, so it is unit-tested)."""
    options, ignored = _client_options(conn_id, extra)
    common: dict[str, Any] = {"conn_id": conn_id, "client_options": options, "ignored_extras": ignored}

    connection_string = _field(extra, "connection_string")
    if connection_string:
        return ClientSpec(mode="connection_string", account_url="", secret=connection_string, **common)

    tenant = _field(extra, "tenant_id")
    if tenant:
        if not (login and password):
            raise ValueError(
                f"the wasb connection {conn_id!r} sets tenant_id (a service principal): put its "
                "application (client) ID in Login and its secret in Password"
            )
        auth_config = extra.get("client_secret_auth_config") or {}
        if not isinstance(auth_config, dict):
            raise ValueError(
                f"the wasb connection {conn_id!r} has a client_secret_auth_config that is not a JSON object"
            )
        return ClientSpec(
            mode="service_principal",
            account_url=account_url(conn_id, host, login),
            secret=password,
            client_id=login,
            tenant_id=tenant,
            credential_options=dict(auth_config),
            **common,
        )

    if public_read:
        return ClientSpec(mode="anonymous", account_url=account_url(conn_id, host, login), **common)

    shared_access_key = _field(extra, "shared_access_key")
    if shared_access_key:
        return ClientSpec(
            mode="shared_access_key",
            account_url=account_url(conn_id, host, login),
            secret=shared_access_key,
            **common,
        )

    sas_token = _field(extra, "sas_token")
    if sas_token:
        if sas_token.startswith("https"):  # WasbHook's test: an http:// SAS URL counts as a token
            return ClientSpec(mode="sas_url", account_url=sas_token, **common)
        return ClientSpec(
            mode="sas_token", account_url=account_url(conn_id, host, login), secret=sas_token, **common
        )

    key = password or _field(extra, "account_key")
    if key:
        url = account_url(conn_id, host, login)
        return ClientSpec(mode="account_key", account_url=url, secret=key, **common)

    mi_client = _field(extra, "managed_identity_client_id")
    wi_tenant = _field(extra, "workload_identity_tenant_id")
    both = bool(mi_client and wi_tenant)
    return ClientSpec(
        mode="default_credential",
        account_url=account_url(conn_id, host, login),
        client_id=mi_client if both else None,
        tenant_id=wi_tenant if both else None,
        **common,
    )


def build_client(spec: ClientSpec) -> BlobServiceClient:
    """The BlobServiceClient for ``spec``, with SDK retries off and the spec's timeouts (no I/O yet)."""
    # imported here: provider discovery reads this module and should not pay for the Azure SDK
    from azure.core.credentials import AzureSasCredential  # noqa: PLC0415
    from azure.storage.blob import BlobServiceClient, ExponentialRetry  # noqa: PLC0415

    # retry_total=0: one attempt per call; the engine's RetryPolicy decides about the next one
    kwargs: dict[str, Any] = {**spec.client_options, "retry_policy": ExponentialRetry(retry_total=0)}
    if spec.mode == "connection_string":
        assert spec.secret is not None
        return BlobServiceClient.from_connection_string(spec.secret, **kwargs)
    credential: Any = None
    if spec.mode == "service_principal":
        from azure.identity import ClientSecretCredential  # noqa: PLC0415

        credential = ClientSecretCredential(
            tenant_id=spec.tenant_id or "",
            client_id=spec.client_id or "",
            client_secret=spec.secret or "",
            **spec.credential_options,
        )
    elif spec.mode == "sas_token":
        credential = AzureSasCredential(spec.secret or "")
    elif spec.mode in ("shared_access_key", "account_key"):
        credential = spec.secret
    elif spec.mode == "default_credential":
        from azure.identity import DefaultAzureCredential  # noqa: PLC0415

        if spec.client_id and spec.tenant_id:
            credential = DefaultAzureCredential(
                managed_identity_client_id=spec.client_id,
                workload_identity_tenant_id=spec.tenant_id,
                additionally_allowed_tenants=[spec.tenant_id],
            )
        else:
            credential = DefaultAzureCredential()
    return BlobServiceClient(account_url=spec.account_url, credential=credential, **kwargs)
