"""Settings: read without executing, typed, validated, secrets from the environment or .env."""
from __future__ import annotations

from pathlib import Path

import pytest

from settings import ConfigError, load_settings

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
    with pytest.raises(ConfigError, match="misp_key is empty.*MISP_KEY"):
        settings.require_misp()


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.py", environ={})
