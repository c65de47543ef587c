"""Settings: read without executing, typed, validated, secrets from the environment or .env."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import constants as C
from settings import (
    KNOWN_SETTINGS,
    SETTINGS,
    ConfigError,
    Scope,
    Settings,
    TargetSettings,
    load_settings,
    read_assignments,
)
from tests.support import ROOT

SEED_CONFIG = """
graph_auth = {
    'tenant': 'tenant-from-file',
    'client_id': 'client-from-file',
    'client_secret': 'secret-from-file',
}
targetProduct = 'Azure Sentinel'
misp_event_filters = [
    {"type_attribute": 'mutex'},
    {"values": 'http://www.test.com', "not_tags": ['tlp:red']},
]
action = 'alert'
passiveOnly = False
days_to_expire = 5
misp_key = 'key-from-file'
misp_domain = 'https://misp.example.org/misp'
misp_verifycert = True
"""


def write(tmp_path: Path, text: str, dotenv: str | None = None) -> Path:
    path = tmp_path / "config.py"
    path.write_text(text)
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    return path


def test_a_2018_sample_config_loads_with_its_filters_translated(tmp_path):
    settings = load_settings(write(tmp_path, SEED_CONFIG), environ={})
    assert settings.misp_event_filters == (
        {"published": True, "type_attribute": "mutex"},
        {"value": "http://www.test.com", "tags": {"NOT": ["tlp:red"]}},
    )
    assert settings.days_to_expire == 5 and settings.action == "alert"
    assert settings.misp_url == "https://misp.example.org/misp/"  # sub-path kept by urljoin
    assert settings.log_dir == tmp_path / "logs" and settings.misp_verifycert is True


def test_environment_beats_dotenv_beats_file(tmp_path):
    config = write(tmp_path, SEED_CONFIG, dotenv="AZURE_CLIENT_SECRET=secret-from-dotenv\nMISP_KEY=key-from-dotenv\n")
    settings = load_settings(config, environ={"MISP_KEY": "key-from-env", "AZURE_TENANT_ID": "tenant-from-env"})
    assert (settings.misp_key, settings.client_secret, settings.tenant, settings.client_id) == (
        "key-from-env", "secret-from-dotenv", "tenant-from-env", "client-from-file",
    )


def test_secrets_never_appear_in_repr(tmp_path):
    settings = load_settings(write(tmp_path, SEED_CONFIG), environ={})
    assert "secret-from-file" not in repr(settings) and "key-from-file" not in repr(settings)
    assert set(settings.secrets()) == {"secret-from-file", "key-from-file"}


def test_unknown_setting_is_a_warning_naming_it(tmp_path):
    settings = load_settings(write(tmp_path, SEED_CONFIG + "misp_flatten_attributes = True\n"), environ={})
    assert settings.warnings == ("config.py: setting 'misp_flatten_attributes' is not used by this version and is ignored",)


@pytest.mark.parametrize(("line", "message"), [
    ("misp_verifycert = 'False'", "misp_verifycert must be True, False or the path of a CA bundle"),
    ("misp_verifycert = 'missing-ca.pem'", "CA bundle 'missing-ca.pem' does not exist"),
    ("defaultConfidenceLevel = 101", "defaultConfidenceLevel must be a whole number from 0 to 100"),
    ("network_ignore_direction = 1", "network_ignore_direction must be True or False"),
    ("graph_auth = ['a']", "graph_auth must be a dict"),
    ("misp_event_filters = {'bogus': 1}", "'bogus' is not applied by MISP's events restSearch"),
    ("misp_event_filters = 'published'", "misp_event_filters must be a dict or a list of dicts"),
    ("misp_domain = 'misp.example.org'", "misp_domain must start with https://"),
    ("import os", "only `name = value` assignments"),
    ("days_to_expire = 30 * 2", "days_to_expire must be a literal value"),
    ("x = = 1", "not valid Python syntax"),
])
def test_bad_values_name_the_setting(tmp_path, line, message):
    with pytest.raises(ConfigError, match=None) as raised:
        load_settings(write(tmp_path, SEED_CONFIG + line + "\n"), environ={})
    assert message in str(raised.value)


def test_ca_bundle_path_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings(write(tmp_path, SEED_CONFIG + "misp_verifycert = 'ca.pem'\n"), environ={})
    assert settings.misp_verifycert == str(tmp_path / "ca.pem")


def test_missing_credentials_are_reported_only_when_needed(tmp_path):
    settings = load_settings(write(tmp_path, "misp_domain = 'https://m.example/'\n"), environ={})
    with pytest.raises(ConfigError, match=r"graph_auth\['tenant'\] is empty.*AZURE_TENANT_ID"):
        settings.require_microsoft()
    with pytest.raises(ConfigError, match=r"misp_key is empty.*MISP_KEY"):
        settings.require_misp()


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.py", environ={})


# --- Issue 12: every setting is one row of settings.SETTINGS ---------------------------------

NOT_SETTINGS = {"config_path", "unknown_settings", "warnings"}  # worked out by the reader, not written


def test_every_settings_attribute_is_filled_by_exactly_one_row():
    filled = [row.attribute for row in SETTINGS if row.attribute]
    assert sorted(filled) == sorted(field.name for field in dataclasses.fields(Settings) if field.name not in NOT_SETTINGS)
    per_target = [field.name for field in dataclasses.fields(TargetSettings) if field.name != "kind"]
    assert [row.name for row in SETTINGS if row.scope is Scope.TARGET] == per_target


def test_unset_settings_keep_the_defaults_they_had_before_the_table(tmp_path):
    settings = load_settings(write(tmp_path, "misp_domain = 'https://m.example'\n"), environ={})
    assert {name: getattr(settings, name) for name in PINNED_DEFAULTS} == PINNED_DEFAULTS
    assert (settings.log_dir, settings.state_dir) == (tmp_path / "logs", tmp_path / "state")
    assert settings.misp_event_filters == (C.DEFAULT_MISP_EVENT_FILTERS,)
    assert settings.targets == (TargetSettings("graph"),)


PINNED_DEFAULTS = {
    "tenant": "", "client_id": "", "client_secret": "", "graph_endpoint": "https://graph.microsoft.com",
    "authority_host": "https://login.microsoftonline.com", "target_product": "Azure Sentinel", "action": "alert",
    "passive_only": False, "days_to_expire": 60, "default_confidence": 50, "network_ignore_direction": False,
    "allow_weak_observables": False, "allow_broad_cidr": False, "misp_url": "https://m.example/", "misp_key": "",
    "misp_verifycert": True, "misp_page_size": 100, "ignore_local_tags": True, "write_post_json": True,
    "verbose_log": False, "http_timeout": 60.0, "max_delete_fraction": 0.2, "renew_days": 15.0, "log_retention_days": 30,
    "full_resync_days": 7, "sentinel_endpoint": "https://api.ti.sentinel.azure.com",
    "sentinel_api_version": "2024-02-01-preview", "management_endpoint": "https://management.azure.com",
    "management_api_version": "2025-09-01", "sourcesystem": "MISP", "max_requests_per_minute": 100,
    "graph_requests_per_minute": 1000, "max_concurrent_requests": 8, "client_certificate_path": None,
    "client_certificate_password": "", "managed_identity": "", "misp_allow_plain_http": False,
}


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path):
    config = write(tmp_path, "graph_auth = {'tenant': 't', 'client_id': 'c', 'client_secret': 1234567890}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})
    assert "graph_auth['client_secret'] must be a string, not an unquoted value" in str(raised.value)
    assert "1234567890" not in str(raised.value)


def test_an_unknown_key_inside_graph_auth_is_a_warning_with_a_did_you_mean(tmp_path):
    config = write(tmp_path, "graph_auth = {'tenant_id': 't', 'client_id': 'c', 'client_secret': 's'}\n")
    settings = load_settings(config, environ={})
    assert settings.unknown_settings == ("config.py: setting graph_auth['tenant_id'] is not used by this version and "
                                         "is ignored (did you mean 'tenant'?)",)


def test_the_did_you_mean_knows_every_row(tmp_path):
    settings = load_settings(write(tmp_path, "allow_broad_cidrs = True\n"), environ={})
    assert settings.unknown_settings[0].endswith("(did you mean 'allow_broad_cidr'?)")
    assert {row.within or row.name for row in SETTINGS} == KNOWN_SETTINGS


GUID = "0b3f5c4e-9d2a-4f61-8e7b-2c1d0a9f8e7d"


def test_a_wrong_value_in_a_target_dict_names_the_target_and_the_key(tmp_path):
    config = write(tmp_path, f"target = [{{'type': 'sentinel', 'workspace_id': '{GUID}', 'workspace_name': 7}}]\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})
    assert str(raised.value) == "target[0]['workspace_name'] must be a string, not 7 (in config.py)"


def test_a_per_target_setting_is_checked_even_when_no_target_reads_it(tmp_path):
    with pytest.raises(ConfigError, match="workspace_name must be a string, not 7"):
        load_settings(write(tmp_path, "target = 'graph'\nworkspace_name = 7\n"), environ={})


def test_a_workspace_dict_takes_what_it_leaves_out_from_the_top_level(tmp_path):
    config = write(tmp_path, f"workspace_name = ' top '\nresource_group = 'rg'\n"
                             f"target = [{{'type': 'sentinel', 'workspace_id': '{GUID}', 'resource_group': 'own'}}]\n")
    (target,) = load_settings(config, environ={}).targets
    assert (target.workspace_id, target.resource_group, target.workspace_name) == (GUID, "own", "top")


def test_environment_variables_override_each_setting_the_table_gives_them(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    environ = {"MISP_URL": "https://env.example", "MISP_KEY": " k ", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c",
               "AZURE_CLIENT_SECRET": "s", "AZURE_CLIENT_CERTIFICATE_PASSWORD": "p"}
    settings = load_settings(write(tmp_path, "misp_domain = 'https://file.example'\n"), environ=environ)
    assert (settings.misp_url, settings.misp_key, settings.tenant, settings.client_id, settings.client_secret,
            settings.client_certificate_password) == ("https://env.example/", "k", "t", "c", "s", "p")
    assert sorted(row.env for row in SETTINGS if row.env) == sorted([*environ, "AZURE_CLIENT_CERTIFICATE_PATH"])


def test_the_sample_config_sets_only_known_settings_at_their_defaults():
    sample = read_assignments(ROOT / "config.py")
    assert sample.keys() <= KNOWN_SETTINGS
    rows = {row.label: row for row in SETTINGS}
    written = {f"{name}['{key}']": value for name, inner in sample.items() if isinstance(inner, dict) and name != "misp_event_filters"
               for key, value in inner.items()}
    written |= {name: value for name, value in sample.items() if not isinstance(value, dict)}
    assert {label: value for label, value in written.items() if value != rows[label].default} == {}
    assert sample["misp_event_filters"].items() >= C.DEFAULT_MISP_EVENT_FILTERS.items()  # the sample narrows, never widens
    text = (ROOT / "config.py").read_text(encoding="utf-8")
    assert [row.env for row in SETTINGS if row.env and row.env not in text] == []
