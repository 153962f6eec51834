"""How a ``wasb`` Airflow connection maps to an azure-storage-blob BlobServiceClient."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from typing import Any

import pytest
from azure.core.credentials import AzureSasCredential
from azure.identity import ClientSecretCredential, DefaultAzureCredential
from azure.storage.blob import BlobServiceClient

from airflow_databricks_transfer import azure_connection
from airflow_databricks_transfer.azure_connection import (
    CLIENT_OPTIONS,
    CONNECTION_TIMEOUT_S,
    EXTRA_FIELDS,
    EXTRAS_WITHOUT_FORM_FIELD,
    LABELS,
    READ_TIMEOUT_S,
    ClientSpec,
    account_url,
    build_client,
    client_spec,
)
from airflow_databricks_transfer.hooks.azure_blob import AzureBlobTransferHook

KEY = "c2VjcmV0LWFjY291bnQta2V5LWZvci10ZXN0cw=="  # base64, as an account key must be
OTHER_KEY = "b3RoZXItYWNjb3VudC1rZXktZm9yLXRlc3Rz"
SAS = "sv=2024-11-04&ss=b&srt=sco&sp=rl&se=2030-01-01T00%3A00%3A00Z&sig=SIGNATUREabc%3D"
CONN_STR = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)
SECRETS = [KEY, OTHER_KEY, "SIGNATUREabc", "sp-secret", CONN_STR]


def spec(
    host: str | None = None,
    login: str | None = None,
    password: str | None = None,
    public_read: bool = False,
    **extra: Any,
) -> ClientSpec:
    return client_spec("my_wasb", host, login, password, extra, public_read=public_read)


def retries(client: Any) -> int:
    """The SDK's retry budget of a client (the storage retry policy in its pipeline)."""
    return int(client._config.retry_policy.total_retries)


def connection_config(client: Any) -> Any:
    """The requests transport's timeouts and TLS verification."""
    return client._pipeline._transport.connection_config


def credential_name(client: BlobServiceClient) -> str:
    """SharedKey credentials become a policy inside the client: name that as the account key."""
    name = type(client.credential).__name__
    return "SharedKey" if name == "SharedKeyCredentialPolicy" else name


# --------------------------------------------------------------------------------------------- auth modes
@pytest.mark.parametrize(
    ("kwargs", "mode", "url", "credential"),
    [
        (
            {"connection_string": CONN_STR},
            "connection_string",
            "http://127.0.0.1:10000/devstoreaccount1/",
            "SharedKey",
        ),
        (
            {
                "login": "app-id",
                "password": "sp-secret",
                "tenant_id": "tenant",
                "host": "https://acct.blob.core.windows.net",
            },
            "service_principal",
            "https://acct.blob.core.windows.net/",
            "ClientSecretCredential",
        ),
        (
            {"login": "acct", "public_read": True},
            "anonymous",
            "https://acct.blob.core.windows.net/",
            "NoneType",
        ),
        (
            {"login": "acct", "shared_access_key": KEY},
            "shared_access_key",
            "https://acct.blob.core.windows.net/",
            "SharedKey",
        ),
        (
            {"login": "acct", "sas_token": SAS},
            "sas_token",
            "https://acct.blob.core.windows.net/",
            "AzureSasCredential",
        ),
        (
            {"sas_token": f"https://acct.blob.core.windows.net/?{SAS}"},
            "sas_url",
            f"https://acct.blob.core.windows.net/?{SAS}",
            "NoneType",
        ),
        (
            {"host": "http://127.0.0.1:10000/devstoreaccount1", "password": KEY},
            "account_key",
            "http://127.0.0.1:10000/devstoreaccount1/",
            "SharedKey",
        ),
        (
            {"login": "acct", "account_key": KEY},
            "account_key",
            "https://acct.blob.core.windows.net/",
            "SharedKey",
        ),
        (
            {"login": "acct"},
            "default_credential",
            "https://acct.blob.core.windows.net/",
            "DefaultAzureCredential",
        ),
    ],
)
def test_each_auth_mode_gives_its_credential_and_url(
    kwargs: dict[str, Any], mode: str, url: str, credential: str
) -> None:
    s = spec(**kwargs)
    assert s.mode == mode
    client = build_client(s)
    assert client.url == url
    assert credential_name(client) == credential


def test_account_key_client_knows_its_account_name() -> None:
    """SharedKey signing needs the account name: taken from Azurite's path or the public host name."""
    azurite = build_client(spec(host="http://127.0.0.1:10000/devstoreaccount1", password=KEY))
    assert azurite.account_name == "devstoreaccount1"
    assert build_client(spec(login="myacct", password=KEY)).account_name == "myacct"


def test_order_of_precedence_the_earlier_method_wins() -> None:
    """Everything set at once, then the winner removed, again and again: WasbHook's order."""
    extra: dict[str, Any] = {
        "connection_string": CONN_STR,
        "tenant_id": "tenant",
        "shared_access_key": KEY,
        "sas_token": SAS,
        "account_key": OTHER_KEY,
    }
    login, password, public_read = "acct", "sp-secret", True
    seen: list[str] = []
    for remove in ["connection_string", "tenant_id", "public_read", "shared_access_key", "sas_token"]:
        s = client_spec("c", None, login, password, extra, public_read=public_read)
        seen.append(s.mode)
        if remove == "public_read":
            public_read = False
        else:
            del extra[remove]
    assert seen == ["connection_string", "service_principal", "anonymous", "shared_access_key", "sas_token"]
    # Password (the account key) before the extra account_key, before DefaultAzureCredential
    s = client_spec("c", None, login, password, extra)
    assert (s.mode, s.secret) == ("account_key", "sp-secret")
    s = client_spec("c", None, login, None, extra)
    assert (s.mode, s.secret) == ("account_key", OTHER_KEY)
    assert client_spec("c", None, login, None, {}).mode == "default_credential"


def test_service_principal_reads_login_password_and_auth_config() -> None:
    s = spec(
        login="app-id",
        password="sp-secret",
        host="https://acct.blob.core.windows.net",
        tenant_id="tenant",
        client_secret_auth_config={"authority": "login.microsoftonline.us"},
    )
    assert (s.client_id, s.tenant_id, s.secret) == ("app-id", "tenant", "sp-secret")
    credential = build_client(s).credential
    assert isinstance(credential, ClientSecretCredential)
    assert credential._authority == "https://login.microsoftonline.us"
    assert (credential._client_id, credential._tenant_id) == ("app-id", "tenant")
    with pytest.raises(ValueError, match=r"'my_wasb'.*application \(client\) ID in Login"):
        spec(login="acct", tenant_id="tenant")


def test_sas_url_must_be_https_to_be_a_url() -> None:
    """As WasbHook: only a value starting with https is the account URL; anything else is a token."""
    assert spec(login="acct", sas_token=f"http://127.0.0.1:1/acct?{SAS}").mode == "sas_token"
    client = build_client(spec(login="acct", sas_token=SAS))
    assert isinstance(client.credential, AzureSasCredential)
    assert client.credential.signature == SAS


def test_default_credential_uses_the_identity_ids_only_when_both_are_set() -> None:
    one = spec(login="acct", managed_identity_client_id="mi")
    assert (one.client_id, one.tenant_id) == (None, None)
    one = spec(login="acct", workload_identity_tenant_id="wt")
    assert (one.client_id, one.tenant_id) == (None, None)
    both = spec(login="acct", managed_identity_client_id="mi", workload_identity_tenant_id="wt")
    assert (both.mode, both.client_id, both.tenant_id) == ("default_credential", "mi", "wt")
    assert isinstance(build_client(both).credential, DefaultAzureCredential)


# ------------------------------------------------------------------------------------------ field reading
def test_legacy_prefixed_extras() -> None:
    assert spec(extra__wasb__connection_string=CONN_STR).mode == "connection_string"
    assert spec(login="a", extra__wasb__sas_token=SAS).mode == "sas_token"
    s = client_spec("c", None, "a", "pw", {"extra__wasb__tenant_id": "t"})
    assert (s.mode, s.tenant_id) == ("service_principal", "t")
    # a present plain key wins even when empty, as in WasbHook._get_field (the form saves empty fields)
    s = spec(login="a", password=KEY, connection_string="", extra__wasb__connection_string=CONN_STR)
    assert s.mode == "account_key"
    assert spec(login="a", extra__wasb__read_timeout="7").client_options["read_timeout"] == 7.0


def test_empty_form_fields_select_nothing() -> None:
    empty: dict[str, Any] = dict.fromkeys([*EXTRA_FIELDS, *EXTRAS_WITHOUT_FORM_FIELD])
    s = client_spec("c", "http://127.0.0.1:10000/devstoreaccount1", None, KEY, empty)
    assert s.mode == "account_key" and s.ignored_extras == ()
    assert s.client_options == {"connection_timeout": CONNECTION_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S}


@pytest.mark.parametrize(
    ("host", "login", "url"),
    [
        ("https://acct.blob.core.windows.net", None, "https://acct.blob.core.windows.net"),
        ("acct.blob.core.windows.net", None, "https://acct.blob.core.windows.net"),
        ("http://127.0.0.1:10000/devstoreaccount1", None, "http://127.0.0.1:10000/devstoreaccount1"),
        ("http://localhost:10000/devstoreaccount1", None, "http://localhost:10000/devstoreaccount1"),
        ("tenant-or-name", "acct", "https://acct.blob.core.windows.net/"),
        (None, "acct", "https://acct.blob.core.windows.net/"),
        (None, "a" * 30, f"https://{'a' * 24}.blob.core.windows.net/"),
    ],
)
def test_account_url_from_host_or_login(host: str | None, login: str | None, url: str) -> None:
    assert account_url("c", host, login) == url


def test_no_account_is_a_clear_error_naming_the_connection() -> None:
    with pytest.raises(ValueError, match=r"wasb connection 'my_wasb' names no storage account: set Host"):
        spec(password=KEY)
    with pytest.raises(ValueError, match=r"'my_wasb' has Host 'nodots', which is not a URL"):
        spec(host="nodots", password=KEY)
    # a connection string or a SAS URL carries its own account
    assert spec(connection_string=CONN_STR).mode == "connection_string"
    assert spec(sas_token=f"https://acct.blob.core.windows.net/?{SAS}").mode == "sas_url"


# ------------------------------------------------------------------------------------ client options
def test_sdk_retries_are_off_and_timeouts_default_to_20_and_60_s() -> None:
    client = build_client(spec(connection_string=CONN_STR))
    assert retries(client) == 0
    config = connection_config(client)
    assert (config.timeout, config.read_timeout) == (20.0, 60.0)


def test_client_options_from_extras_are_coerced_and_reach_the_client() -> None:
    s = spec(
        connection_string=CONN_STR,
        api_version="2026-06-06",
        connection_timeout="5",
        read_timeout=7,
        max_single_get_size="1048576",
        connection_verify="false",
    )
    assert s.client_options == {
        "connection_timeout": 5.0,
        "read_timeout": 7.0,
        "api_version": "2026-06-06",
        "max_single_get_size": 1048576,
        "connection_verify": False,
    }
    client = build_client(s)
    assert client.api_version == "2026-06-06"
    assert client._config.max_single_get_size == 1048576
    config = connection_config(client)
    assert (config.timeout, config.read_timeout, config.verify) == (5.0, 7.0, False)
    assert (
        spec(connection_string=CONN_STR, connection_verify="/etc/ca.pem").client_options["connection_verify"]
        == "/etc/ca.pem"
    )


def test_pipeline_and_unknown_extras_are_ignored_by_name() -> None:
    """WasbHook passes every extra on; ``retry_total`` or ``transport`` there would undo our pipeline."""
    s = spec(connection_string=CONN_STR, retry_total=5, transport="x", retry_policy="y", colour="blue")
    assert s.ignored_extras == ("colour", "retry_policy", "retry_total", "transport")
    assert retries(build_client(s)) == 0


@pytest.mark.parametrize(
    "extra",
    [
        {"read_timeout": "soon"},
        {"connection_timeout": 0},
        {"use_byte_buffer": "maybe"},
        {"client_secret_auth_config": "x"},
    ],
)
def test_bad_option_values_are_clear_errors(extra: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="'my_wasb'"):
        spec(login="a", password="p", tenant_id="t", **extra)


# ------------------------------------------------------------------------------------------- secrets
MODES_WITH_SECRETS: list[dict[str, Any]] = [
    {"connection_string": CONN_STR},
    {"login": "a", "password": "sp-secret", "tenant_id": "t", "client_secret_auth_config": {"x": KEY}},
    {"login": "a", "shared_access_key": KEY},
    {"login": "a", "sas_token": SAS},
    {"sas_token": f"https://acct.blob.core.windows.net/?{SAS}"},
    {"login": "a", "password": KEY},
    {"login": "a", "account_key": OTHER_KEY},
]


@pytest.mark.parametrize("kwargs", MODES_WITH_SECRETS)
def test_spec_repr_shows_no_secret(kwargs: dict[str, Any]) -> None:
    s = spec(**kwargs)
    text = repr(s) + str(s) + s.endpoint
    assert s.mode in text
    for secret in SECRETS:
        assert secret not in text


def test_hook_logs_no_secret(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    with caplog.at_level(logging.DEBUG):
        for i, kwargs in enumerate(MODES_WITH_SECRETS):
            extra = {k: v for k, v in kwargs.items() if k not in ("login", "password")}
            conn = {"conn_type": "wasb", "login": kwargs.get("login"), "password": kwargs.get("password")}
            conn["extra"] = {**extra, "colour": KEY}  # an ignored extra is named, its value never shown
            monkeypatch.setenv(f"AIRFLOW_CONN_WASB_{i}", json.dumps(conn))
            hook = AzureBlobTransferHook(f"wasb_{i}")
            assert hook.get_conn() is hook.blob_service_client  # cached
            assert repr(hook.client_spec).count("colour") == 1
    logged = caplog.text + capsys.readouterr().out  # Airflow's hook logger writes through structlog
    assert logged.count("auth to") == len(MODES_WITH_SECRETS) and "colour" in logged
    for secret in SECRETS:
        assert secret not in logged


def test_hook_containers_and_blobs_come_from_the_one_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv(
        "AIRFLOW_CONN_WASB_DEFAULT",
        json.dumps({"conn_type": "wasb", "extra": {"connection_string": CONN_STR}}),
    )
    hook = AzureBlobTransferHook()
    assert hook.wasb_conn_id == "wasb_default"
    blob = hook.blob_client("box", "dir/a.bin")
    assert blob.url == "http://127.0.0.1:10000/devstoreaccount1/box/dir/a.bin"
    assert hook.container_client("box").container_name == "box"
    assert retries(blob) == 0


def test_missing_connection_names_it_and_what_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from airflow.sdk.exceptions import AirflowNotFoundException

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    with pytest.raises(
        AirflowNotFoundException, match=r"'no_such_wasb' isn't defined.*AIRFLOW_CONN_NO_SUCH_WASB"
    ):
        AzureBlobTransferHook("no_such_wasb").get_conn()


# ------------------------------------------------------------------------------ same as the official hook
OFFICIAL_CONNECTIONS: list[dict[str, Any]] = [
    {"extra": {"connection_string": CONN_STR, "tenant_id": "t"}},
    {
        "login": "app-id",
        "password": "sp-secret",
        "host": "https://acct.blob.core.windows.net",
        "extra": {"tenant_id": "t", "shared_access_key": KEY},
    },
    {"login": "acct", "public_read": True, "extra": {"sas_token": SAS}},
    {"login": "acct", "extra": {"shared_access_key": KEY, "sas_token": SAS}},
    {"login": "acct", "password": KEY, "extra": {"sas_token": SAS}},
    {"extra": {"sas_token": f"https://acct.blob.core.windows.net/?{SAS}"}},
    {"host": "http://127.0.0.1:10000/devstoreaccount1", "password": KEY},
    {"login": "acct", "extra": {"account_key": KEY}},
    {"login": "acct", "extra": {"extra__wasb__shared_access_key": KEY}},
    {"login": "acct", "extra": {"managed_identity_client_id": "mi", "workload_identity_tenant_id": "wt"}},
    {"host": "acct.blob.core.windows.net", "login": "acct", "password": KEY},
]


@pytest.mark.parametrize("case", OFFICIAL_CONNECTIONS)
def test_same_client_as_the_official_wasb_hook(case: dict[str, Any]) -> None:
    """A connection made for the official provider gives the same URL and credential type here."""
    from airflow.models.connection import Connection
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    conn = Connection(
        conn_id="probe",
        conn_type="wasb",
        host=case.get("host"),
        login=case.get("login"),
        password=case.get("password"),
        extra=case.get("extra"),
    )

    class Probe(WasbHook):
        @classmethod
        def get_connection(cls, conn_id: str) -> Any:
            return conn

    official = Probe("probe", public_read=case.get("public_read", False)).get_conn()
    ours = build_client(
        client_spec(
            "probe",
            conn.host,
            conn.login,
            conn.password,
            conn.extra_dejson,
            public_read=case.get("public_read", False),
        )
    )
    assert ours.url == official.url
    assert credential_name(ours) == credential_name(official)
    assert ours.account_name == official.account_name


# ------------------------------------------------------------------------------------------ the form
def test_every_extra_the_spec_reads_has_a_form_field_or_is_a_client_option() -> None:
    seen: set[str] = set()

    class Recording(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            seen.add(key)
            return super().get(key, default)

        def __contains__(self, key: object) -> bool:
            seen.add(str(key))
            return super().__contains__(key)

    for case in [*OFFICIAL_CONNECTIONS, {"login": "a"}]:
        extra = Recording(case.get("extra", {}))
        with contextlib.suppress(ValueError):
            client_spec("c", case.get("host"), case.get("login"), case.get("password"), extra)
    read = {name.removeprefix("extra__wasb__") for name in seen}
    assert read <= set(EXTRA_FIELDS) | set(EXTRAS_WITHOUT_FORM_FIELD) | set(CLIENT_OPTIONS)
    assert set(EXTRA_FIELDS) - {"connection_timeout", "read_timeout"} <= read
    assert {"connection_timeout", "read_timeout"} <= set(CLIENT_OPTIONS)


def test_connection_types_only_without_the_official_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    assert azure_connection.official_provider_installed()  # the test extra installs it
    assert azure_connection.connection_types() == []
    monkeypatch.setattr(azure_connection, "official_provider_installed", lambda: False)
    (ours,) = azure_connection.connection_types()
    assert ours["connection-type"] == "wasb"
    assert ours["hook-class-name"] == f"{AzureBlobTransferHook.__module__}.{AzureBlobTransferHook.__name__}"
    assert ours["conn-fields"] == EXTRA_FIELDS
    assert AzureBlobTransferHook.get_ui_field_behaviour()["relabeling"] == LABELS
    assert (
        AzureBlobTransferHook.conn_type == "wasb" and AzureBlobTransferHook.conn_name_attr == "wasb_conn_id"
    )


def test_provider_discovery_imports_neither_airflow_nor_the_azure_sdk() -> None:
    """Airflow builds the provider info while it discovers providers: that must stay cheap and cycle-free."""
    code = (
        "import sys\n"
        "from airflow_databricks_transfer.get_provider_info import get_provider_info\n"
        "get_provider_info()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'azure'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
