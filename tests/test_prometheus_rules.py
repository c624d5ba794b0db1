"""The example Prometheus rules: ``promtool`` checks them and runs their unit tests.

``examples/prometheus-rules.yml`` holds the recording rules and the alerts;
``tests/promtool/*.yml`` are promtool unit tests of them (``promtool test rules``), and this
file runs both through promtool, then checks that every alert has a test where it fires and
one where it does not, and every recording rule a test of its values, so a rule added without
tests fails here. ``promtool`` comes with Debian's ``prometheus`` package (``make test``
installs it through ``.ci/ensure-prometheus``); where it is missing the tests that run it skip
with the reason, as ``tests/_prometheus.py`` does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _prometheus import INSTALL

from xzatoma.telemetry import _names as n

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "prometheus-rules.yml"
UNIT_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.yml"))
SEVERITIES = {"critical", "warning", "info"}


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip(f"promtool is not installed: {INSTALL}")
    return binary


def run_promtool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def records() -> dict[str, dict[str, Any]]:
    return {rule["record"]: rule for rule in rules() if "record" in rule}


def unit_tests() -> list[dict[str, Any]]:
    return [test for path in UNIT_TESTS for test in load(path)["tests"]]


# -- promtool ------------------------------------------------------------------------------
# The commands docs/dashboards-and-alerts.md gives, run as written from the repository's root.
CHECK_RULES = "promtool check rules examples/prometheus-rules.yml"
TEST_RULES = "promtool test rules tests/promtool/*.yml"
CHECK_CONFIG = "promtool check config examples/prometheus.yml"


def run_shell(command: str) -> subprocess.CompletedProcess[str]:
    promtool()  # skips when it is missing
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def test_promtool_checks_the_rules() -> None:
    proc = run_shell(CHECK_RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout, proc.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in tests/promtool"
    proc = run_shell(TEST_RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(UNIT_TESTS), proc.stdout


def test_example_config_loads_the_rules() -> None:
    config = load(ROOT / "examples" / "prometheus.yml")
    assert config["rule_files"] == [RULES.name]
    proc = run_shell(CHECK_CONFIG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout, proc.stdout


def test_the_docs_give_the_commands_the_tests_run() -> None:
    doc = (ROOT / "docs" / "dashboards-and-alerts.md").read_text(encoding="utf-8")
    block = doc.split("Check the rules and run their unit tests", 1)[1]
    script = block.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in script.splitlines()]
    assert commands == [CHECK_RULES, TEST_RULES, CHECK_CONFIG]


# The unit tests have teeth: each change below breaks what an alert means, and some unit test
# must then fail. (Not every possible change: one per idea the alerts are built on.)
MUTATIONS = {
    "fast burn without its short window": (
        "and\n          job:subagent_errors:ratio_rate5m",
        "or\n          job:subagent_errors:ratio_rate5m",
        "slo-burn.yml",
    ),
    "a stricter SLO": ("vector(0.99)", "vector(0.999)", "slo-burn.yml"),
    "quota refusals without the for": ("for: 10m", "for: 0m", "health.yml"),
    "stuck while model calls finish": (
        "\n          unless on (job, instance)\n          sum by (job, instance) "
        "(increase(gen_ai_client_operation_duration_seconds_count[15m])) > 0",
        "",
        "health.yml",
    ),
}
"""What to change in the rules, and the promtool unit test file that must then fail."""


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_promtool_unit_tests_fail_on_a_broken_rule(mutation: str, tmp_path: Path) -> None:
    old, new, unit_test = MUTATIONS[mutation]
    text = RULES.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"the rules no longer contain {old!r}"
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / RULES.name).write_text(text.replace(old, new), encoding="utf-8")
    shutil.copytree(ROOT / "tests" / "promtool", tmp_path / "tests" / "promtool")
    assert run_promtool("check", "rules", tmp_path / "examples" / RULES.name).returncode == 0
    proc = run_promtool("test", "rules", f"tests/promtool/{unit_test}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout + proc.stderr


# -- coverage of the unit tests, read from the YAML ----------------------------------------
def test_every_unit_test_file_loads_the_example_rules() -> None:
    for path in UNIT_TESTS:
        files = [(path.parent / f).resolve() for f in load(path)["rule_files"]]
        assert files == [RULES], path.name


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in unit_tests():
        for case in test.get("alert_rule_test", ()):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alerts())
    assert names, "no alerts in the rules file"
    assert names - firing == set(), "alerts with no unit test where they fire"
    assert names - quiet == set(), "alerts with no unit test where they do not fire"
    assert (firing | quiet) - names == set(), "unit tests of alerts that do not exist"


def test_every_recording_rule_is_tested() -> None:
    tested = " ".join(
        case["expr"] for test in unit_tests() for case in test.get("promql_expr_test", ())
    )
    used = set(re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", tested))
    assert set(records()) - used == set(), "recording rules with no promql_expr_test"


def test_recording_rule_names_follow_the_convention() -> None:
    # level:metric:operations (https://prometheus.io/docs/practices/rules/): the level names
    # the labels the rule keeps.
    for name, rule in records().items():
        level, _metric, operations = name.split(":")
        assert operations, name
        kept = re.findall(r"sum by \(([^)]*)\)", rule["expr"])
        if level != "slo":
            assert kept, name
            for labels in kept:
                expected = "_".join(x.strip() for x in labels.split(",") if x.strip() != "le")
                assert level == expected, (name, labels)


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for name, rule in alerts().items():
        assert name.startswith("Xzatoma"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) >= {"summary", "description"}, name
        assert all(rule["annotations"][k].strip() for k in ("summary", "description")), name


def test_rules_use_only_metric_names_xzatoma_exposes() -> None:
    exposed = set(n.PROMETHEUS_NAMES.values()) | {"up"}
    used: set[str] = set()
    for rule in rules():
        expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", rule["expr"])  # matchers, ranges
        expr = re.sub(r"\b(by|on)\s*\([^)]*\)", "", expr)  # grouping labels
        names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - PROMQL_WORDS
        for name in names - set(records()):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in exposed or base in exposed, (rule.get("record") or rule["alert"], name)
            used.add(name)
    assert n.PROMETHEUS_NAMES[n.ERRORS] in used


PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "sum",
    "rate",
    "increase",
    "vector",
    "scalar",
    "min_over_time",
    "histogram_quantile",
}
