"""The Defender target's settings, the per-target policy and the cloud profiles: read once,
validated at start-up, and each mistake a one-line error naming the setting."""
from __future__ import annotations

from pathlib import Path

import pytest

import constants as C
from settings import ConfigError, Settings, load_settings

BASE = "graph_auth = {'tenant': 't', 'client_id': 'c', 'client_secret': 's'}\nmisp_domain = 'https://misp.example'\n"


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "config.py"
    path.write_text(BASE + text, encoding="utf-8")
    return load_settings(path, environ={})


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_graph_with_defender_atp_is_refused_and_points_to_the_defender_target(tmp_path):
    message = refused(tmp_path, "targetProduct = 'Microsoft Defender ATP'\n")
    assert "targetProduct" in message and 'target = "defender"' in message


def test_defender_defaults(tmp_path):
    (target,) = load(tmp_path, "target = 'defender'\n").targets
    assert target.label == "defender"
    assert (target.defender_endpoint, target.defender_scope) == (C.DEFAULT_DEFENDER_ENDPOINT, C.DEFAULT_DEFENDER_ENDPOINT)
    assert (target.defender_max_indicators, target.defender_action, target.defender_generate_alert) == (10000, "Audit", True)
    assert (target.defender_severity, target.defender_rbac_groups, target.tlp_max, target.min_confidence) == ("", (), "", None)


def test_a_defender_dict_carries_its_own_policy_and_the_top_level_fills_the_rest(tmp_path):
    settings = load(tmp_path, "target = ['sentinel', {'type': 'defender', 'defender_action': 'Block', 'tlp_max': "
                              "'amber+strict'}]\nworkspace_id = '99999999-8888-7777-6666-555555555555'\nmin_confidence = 40\n"
                              "defender_rbac_groups = ['Servers']\n")
    sentinel, defender = settings.targets
    assert (defender.defender_action, defender.tlp_max, defender.min_confidence, defender.defender_rbac_groups) == (
        "Block", "amber+strict", 40, ("Servers",))
    assert (sentinel.tlp_max, sentinel.min_confidence) == ("", 40)


@pytest.mark.parametrize(("text", "named"), [
    ("target = [{'type': 'graph', 'defender_action': 'Block'}]\n", "defender_action"),
    ("target = 'defender'\ndefender_action = 'Destroy'\n", "defender_action"),
    ("target = 'defender'\ndefender_action = 'Audit'\ndefender_generate_alert = False\n", "defender_generate_alert"),
    ("target = 'defender'\ndefender_max_indicators = 15001\n", "defender_max_indicators"),
    ("target = 'defender'\ndefender_severity = 'Critical'\n", "defender_severity"),
    ("target = 'defender'\ndefender_rbac_groups = 'Servers'\n", "defender_rbac_groups"),
    ("tlp_max = 'purple'\n", "tlp_max"),
    ("min_confidence = 101\n", "min_confidence"),
    ("cloud = 'china'\n", "cloud"),
    ("target = 'defender'\ndefender_scope = 'http://api.example/.default'\n", "defender_scope"),
    ("target = 'defender'\ndefender_endpoint = 'api.securitycenter.microsoft.com'\n", "defender_endpoint"),
    ("target = ['defender', 'defender']\n", "each once"),
    ("target = 'defender'\ndefender_recommended_actions = '" + "x" * 4097 + "'\n", "defender_recommended_actions"),
])
def test_each_mistake_is_one_line_naming_the_setting(tmp_path, text, named):
    assert named in refused(tmp_path, text)


def test_allowed_raises_no_alert_unless_asked(tmp_path):
    (target,) = load(tmp_path, "target = 'defender'\ndefender_action = 'Allowed'\n").targets
    assert target.defender_generate_alert is False


@pytest.mark.parametrize("cloud", list(C.CLOUDS))
def test_one_cloud_setting_picks_every_host(tmp_path, cloud):
    settings = load(tmp_path, f"target = 'defender'\ncloud = '{cloud}'\n")
    hosts = C.CLOUDS[cloud]
    assert (settings.authority_host, settings.graph_endpoint, settings.management_endpoint, settings.sentinel_endpoint,
            settings.targets[0].defender_endpoint) == (hosts["authority_host"], hosts["graph_endpoint"],
                                                        hosts["management_endpoint"], hosts["sentinel_endpoint"],
                                                        hosts["defender_endpoint"])


def test_gcc_high_uses_the_us_government_hosts_and_each_endpoint_still_overrides_its_own(tmp_path):
    settings = load(tmp_path, "target = 'defender'\ncloud = 'gcc-high'\ngraph_endpoint = 'https://graph.example'\n"
                              "defender_endpoint = 'https://us.api.security.microsoft.com'\n"
                              "defender_scope = 'https://api-gov.securitycenter.microsoft.us/.default'\n")
    assert settings.authority_host == "https://login.microsoftonline.us"
    assert settings.management_endpoint == "https://management.usgovcloudapi.net"
    assert settings.sentinel_endpoint == "https://api.ti.sentinel.azure.us"
    assert settings.graph_endpoint == "https://graph.example"
    target = settings.targets[0]
    assert (target.defender_endpoint, target.defender_scope) == ("https://us.api.security.microsoft.com",
                                                                "https://api-gov.securitycenter.microsoft.us")
