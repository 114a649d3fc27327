"""The Prometheus rules in ops/prometheus/: the SLO rules are what `omni slo rules` generates from
ops/prometheus/slos.json, every rule file passes `promtool check rules`, and the rule unit tests in
ops/prometheus/tests/ pass `promtool test rules` (page and ticket thresholds, the platform alerts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.promtool import ROOT, promtool

RULES = ROOT / "ops/prometheus"


def test_the_slo_rules_are_generated_from_the_definitions(tmp_path: Path) -> None:
    out = tmp_path / "slos.rules.yml"
    generated = subprocess.run(
        [sys.executable, "-m", "omni.cli", "slo", "rules", "--definitions", str(RULES / "slos.json"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert generated.returncode == 0, generated.stderr
    assert out.read_text() == (RULES / "slos.rules.yml").read_text(), (
        "regenerate: omni slo rules --definitions ops/prometheus/slos.json"
    )


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
