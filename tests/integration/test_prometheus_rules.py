"""The Prometheus rules in ops/prometheus/: the SLO rules are what `omni slo rules` generates from
ops/prometheus/slos.json, every rule file passes `promtool check rules`, and the rule unit tests in
ops/prometheus/tests/ pass `promtool test rules` (page and ticket thresholds, the platform alerts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from omni.cli import slo_rules
from tests.promtool import ROOT, promtool

RULES = ROOT / "ops/prometheus"


def test_the_slo_rules_are_generated_from_the_definitions(tmp_path: Path) -> None:
    out = tmp_path / "slos.rules.yml"
    slo_rules(out=out, definitions=RULES / "slos.json")  # `omni slo rules --definitions ... --out ...`
    assert out.read_text() == (RULES / "slos.rules.yml").read_text(), (
        "regenerate: omni slo rules --definitions ops/prometheus/slos.json"
    )


def test_an_owner_with_a_quote_or_a_backslash_still_makes_rules_promtool_takes(tmp_path: Path) -> None:
    """A definitions file's owner went into the rules' selectors as it was: a quote in it ended the
    PromQL string, and promtool refused the file `omni slo rules` wrote (and said was fine)."""
    import json

    listed = json.loads((RULES / "slos.json").read_text())
    odd = [{**slo, "owner": 'team "a" \\ b'} for slo in listed]
    definitions, out = tmp_path / "slos.json", tmp_path / "odd.rules.yml"
    definitions.write_text(json.dumps(odd))
    slo_rules(out=out, definitions=definitions)
    checked = subprocess.run([promtool(), "check", "rules", str(out)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'owner="team \\"a\\" \\\\ b"' in out.read_text()


def test_promtool_checks_the_rules_and_passes_their_unit_tests() -> None:
    files = sorted(RULES.glob("*.rules.yml"))
    assert {f.name for f in files} >= {"platform.rules.yml", "slos.rules.yml"}
    checked = subprocess.run([promtool(), "check", "rules", *map(str, files)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = sorted(p.name for p in (RULES / "tests").glob("*.test.yml"))
    assert tests == ["platform.test.yml", "slos.test.yml"]
    tested = subprocess.run(
        [promtool(), "test", "rules", *tests], capture_output=True, text=True, check=False, cwd=RULES / "tests"
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(tests)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each Grafana panel's query (its variables given a value), as a recording rule."""
    import yaml

    from ops.grafana import dashboards

    rules = []
    for name, model in dashboards.DASHBOARDS.items():
        for n, target in enumerate(t for p in model["panels"] for t in p["targets"]):
            expr = target["expr"].replace("$owner", ".*").replace("$slo", ".*")
            rules.append({"record": f"dashboard:{name.removesuffix('.json').replace('-', '_')}:{n}", "expr": expr})
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_without_a_file_the_rules_come_from_the_deployments_views(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`omni slo rules` reads the SLOs at their current versions from the views (embedded: its data folder)."""
    from stores import slos as slo_store
    from stores.database import SqliteDatabase
    from stores.schema import SCHEMA

    db = SqliteDatabase(tmp_path / "data" / "views.sqlite")
    db.migrate(SCHEMA)
    body = {
        "event_type": "inference",
        "sli": "latency",
        "latency_property": "$.data.ms",
        "threshold_ms": 250,
        "objective": 99.5,
        "window": "28d",
    }
    with db.transaction() as tx:
        slo_store.put(tx, "tenant-1", "fast", 2, body, "2026-12-05T00:00:00Z")
    db.close()
    out = tmp_path / "rules.yml"
    monkeypatch.setenv("OMNI_MODE", "embedded")
    monkeypatch.setenv("OMNI_DATA_DIR", str(tmp_path / "data"))
    slo_rules(out=out, definitions=None)
    text = out.read_text()
    # 28 days, 99.5%: the 1h page threshold is 0.02 x 672 h = 13.44 times the 0.5% budget.
    assert 'slo:sli_error:ratio_rate1h{owner="tenant-1",slo="fast"} > 0.0672' in text
    assert "slo:sli_error:ratio_rate28d" in text
