"""Review of the Defender target (issue 13): each test pins a defect the review found, against
the MISP, Entra and Defender for Endpoint stand-ins over real HTTPS."""
from __future__ import annotations

import copy
import json
import uuid

from constants import ExitCode
from tests.support import (
    defender_config,
    expected_defender_keys,
    graph_session,
    held_defender_keys,
    kill_during_defender_import,
    published,
    run_cli,
)

STRONG_DOMAINS = ("strong-one.example.com", "strong-two.example.com", "strong-three.example.com")


def add_strong_event(standins, values=STRONG_DOMAINS) -> dict:
    """A new published event whose domains outrank every fixture indicator (threat level High,
    confidence 100)."""
    event = copy.deepcopy(published(standins)[0])
    event.update(uuid=str(uuid.uuid4()), threat_level_id="1", timestamp=str(int(event["timestamp"]) + 600),
                 Tag=[{"name": "misp:confidence-level=\"completely-confident\""}], Object=[])
    event["Attribute"] = [{"uuid": str(uuid.uuid4()), "type": "domain", "category": "Network activity", "value": value,
                           "to_ids": True, "timestamp": event["timestamp"], "comment": "", "deleted": False}
                          for value in values]
    standins.misp.events.append({"Event": event})
    return event


def test_a_failed_displacement_does_not_let_newcomers_past_the_budget(standins, tmp_path, capsys):
    """The budget removes the weakest incumbents to make room; when that removal fails, the
    room it would have made must not be filled: the tenant would hold more than our share."""
    config = defender_config(tmp_path, standins, defender_max_indicators=10)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    add_strong_event(standins, STRONG_DOMAINS[:2])  # 2 of 10 displaced: within max_delete_fraction
    standins.defender.fail_next(400, path_suffix="/BatchDelete")
    run_cli(config, capsys=capsys)
    assert sum(held_defender_keys(standins).values()) <= 10


def test_the_budget_blocked_by_the_safety_valve_says_so_in_its_exit_code(standins, tmp_path, capsys):
    """3 of 10 incumbents outranked: more than max_delete_fraction, so none is removed. Like any
    blocked removal, the run must end with exit 6 and say so, not 0."""
    config = defender_config(tmp_path, standins, defender_max_indicators=10)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    add_strong_event(standins)
    result = run_cli(config, capsys=capsys)
    assert sum(held_defender_keys(standins).values()) == 10
    assert result.code == ExitCode.SAFETY_VALVE, result.out + result.err
    assert "DELETIONS BLOCKED by the safety valve: 3" in result.out



def drop_held_attributes(standins, count: int) -> None:
    """Take `count` attributes whose indicators Defender holds out of MISP (to_ids off)."""
    held = {item["indicatorValue"] for item in standins.defender.held(standins.client_id)}
    dropped = 0
    for event in published(standins):
        for attribute in event.get("Attribute", []):
            if dropped < count and attribute.get("to_ids") and attribute["value"].lower() in held:
                attribute["to_ids"] = False
                held.discard(attribute["value"].lower())
                event["timestamp"] = str(int(event["timestamp"]) + 60)
                dropped += 1
    assert dropped == count


def test_a_dry_run_with_the_budget_full_plans_what_the_real_run_sends(standins, tmp_path, capsys):
    """Removals free room for newcomers. A dry run removes nothing, but must plan as if it had:
    else it reports as over-budget what the real run then sends."""
    config = defender_config(tmp_path, standins, defender_max_indicators=10)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    drop_held_attributes(standins, 2)
    assert run_cli(config, "--dry-run", capsys=capsys).code == ExitCode.OK
    real = run_cli(config, capsys=capsys)
    assert real.code == ExitCode.OK and sum(held_defender_keys(standins).values()) == 10
    reports = real.logs("run-report")  # one log folder: the dry run's report, then the real one's
    planned, done = reports[-2], reports[-1]
    assert planned["dry_run"] and not done["dry_run"]
    assert (planned["new"], planned["deleted"]) == (done["new"], done["deleted"]) == (2, 2)
    assert planned["skipped"]["over-budget"] == done["skipped"]["over-budget"]



def test_what_a_killed_import_left_unanswered_is_removed_when_misp_drops_it(standins, tmp_path, capsys):
    """A kill while import's answer is on its way leaves `pending` rows without Defender's id.
    When MISP then drops such an attribute, its removal must find the id (Defender holds the
    indicator): BatchDelete of an empty id is refused, orphaning it and, with it, every other
    removal in the same batch, run after run."""
    config = defender_config(tmp_path, standins)
    kill_during_defender_import(config, standins)
    drop_held_attributes(standins, 2)
    for _ in range(2):
        result = run_cli(config, capsys=capsys)
        assert result.code == ExitCode.OK, result.out + result.err
    assert set(held_defender_keys(standins)) == expected_defender_keys(standins.misp.events)
    assert max(held_defender_keys(standins).values()) == 1


def test_an_indicator_deleted_in_the_portal_and_imported_anew_is_removed_under_its_new_id(standins, tmp_path, capsys):
    """import recreates an indicator Defender no longer holds (deleted in the portal, expired)
    under a new id. The state must take that id: else, once MISP drops the attribute, the
    removal of the old id finds nothing and the new indicator stays, still blocking."""
    config = defender_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    event, attribute = next((event, a) for event in published(standins) for a in event.get("Attribute", [])
                            if a.get("to_ids") and a["type"] == "sha1")
    victim = next(item for item in standins.defender.held() if item["indicatorValue"] == attribute["value"].lower())
    portal = graph_session(standins, resource=standins.defender.url)
    assert portal.delete(f"{standins.defender.url}/api/indicators/{victim['id']}", timeout=10).status_code == 204
    attribute["comment"] = "edited in MISP"
    event["timestamp"] = str(int(event["timestamp"]) + 60)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert attribute["value"].lower() in {item["indicatorValue"] for item in standins.defender.held()}
    attribute["to_ids"] = False
    event["timestamp"] = str(int(event["timestamp"]) + 60)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert attribute["value"].lower() not in {item["indicatorValue"] for item in standins.defender.held()}


def test_explain_says_when_the_budget_keeps_an_attribute_out(standins, tmp_path, capsys):
    """--explain answers "why is this not in Defender?": for an attribute the budget keeps out
    it must not say it is sent."""
    config = defender_config(tmp_path, standins, defender_max_indicators=5)
    first = run_cli(config, capsys=capsys)
    over = next(path for path in first.log_dir.glob("*over-budget-defender*"))
    value = json.loads(over.read_text().splitlines()[0])["value"]
    explained = run_cli(config, "--explain", value, capsys=capsys)
    assert explained.code == ExitCode.OK, explained.out + explained.err
    assert "over-budget" in explained.out and ": new" not in explained.out


def test_a_value_another_source_holds_does_not_take_a_budget_slot(standins, tmp_path, capsys):
    """With Ti.ReadWrite.All the listing shows which values another source holds: those are
    never sent, so they must not take a place in our share that the next best would fill."""
    other = "ffffffff-0000-0000-0000-000000000000"
    standins.entra.clients[other] = "other-secret"
    standins.defender.grant(other, "Ti.ReadWrite")
    standins.defender.grant(standins.client_id, "Ti.ReadWrite.All")
    add_strong_event(standins, STRONG_DOMAINS[:2])
    session = graph_session(standins, resource=standins.defender.url, client_id=other, secret="other-secret")
    theirs = {"indicatorValue": STRONG_DOMAINS[0], "indicatorType": "DomainName", "action": "Block", "title": "theirs",
              "description": "blocked by another team"}
    answer = session.post(f"{standins.defender.url}/api/indicators/import", json={"Indicators": [theirs]}, timeout=10)
    assert answer.status_code == 200 and answer.json()["value"][0]["isFailed"] is False
    run_cli(defender_config(tmp_path, standins, defender_max_indicators=5), capsys=capsys)
    assert sum(held_defender_keys(standins).values()) == 5


def test_tlp_max_amber_keeps_amber_strict_out(standins, tmp_path, capsys):
    """TLP 2.0's AMBER+STRICT is more restrictive than AMBER: a target whose ceiling is amber
    must not receive it (README: the most restrictive TLP a target receives)."""
    event = add_strong_event(standins)
    event["Tag"] = [*event["Tag"], {"name": "tlp:amber+strict"}]
    result = run_cli(defender_config(tmp_path, standins, tlp_max="amber"), capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    held = {item["indicatorValue"] for item in standins.defender.held()}
    assert held and held.isdisjoint(STRONG_DOMAINS)


def test_a_value_two_new_events_share_is_not_sent_again_on_later_runs(standins, tmp_path, capsys):
    """Both events that yield a shared value stay unsettled (read on every run). For a
    budgeted target the value is a newcomer until `fill`: the first event must be marked as
    well, else a later run reads only the second, moves the indicator to it (an import), and
    the run after moves it back (another import), though MISP did not change."""
    first = add_strong_event(standins, ("shared.example.com",))
    second = add_strong_event(standins, ("shared.example.com",))
    assert first["uuid"] != second["uuid"]
    config = defender_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    imports = standins.defender.calls["import"]
    for _ in range(3):
        assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert standins.defender.calls["import"] == imports


def test_an_incumbent_displaced_by_the_budget_comes_back_when_room_frees(standins, tmp_path, capsys):
    """A displaced incumbent is over budget like a newcomer that did not fit: its event must be
    read again until it is back in. Else a run that clears the full-budget flag (here an
    --event run) lets the next nights skip that unchanged event, and the indicator stays out
    though its better rival is gone."""
    weak = add_strong_event(standins, ("weak-one.example.com", "weak-two.example.com"))
    weak.update(threat_level_id="3", Tag=[])
    standins.misp.events[:] = standins.misp.events[-1:]  # the weak event alone
    config = defender_config(tmp_path, standins, defender_max_indicators=2, max_delete_fraction=1.0)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    strong = add_strong_event(standins, ("strong-one.example.com",))
    for _ in range(2):  # incremental: over budget, the flag set; then a full read displaces a weak one
        assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert len(standins.defender.held()) == 2 and "strong-one.example.com" in held_values(standins)
    assert run_cli(config, "--event", strong["uuid"], capsys=capsys).code == ExitCode.OK
    strong["Attribute"][0]["deleted"] = True
    strong["timestamp"] = str(int(strong["timestamp"]) + 60)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert held_values(standins) == {"weak-one.example.com", "weak-two.example.com"}


def held_values(standins) -> set[str]:
    return {item["indicatorValue"] for item in standins.defender.held()}
