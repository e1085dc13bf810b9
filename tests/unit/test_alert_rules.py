"""The alerting rules (monitoring/alerts.yml): valid, unit-tested by promtool, documented, on real metrics.

promtool is Debian's (the prometheus package, from localstack/install.sh): a
missing one fails these tests, it never skips them. The alerts that must exist
are written here, not read from the file, so a rule that goes missing fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import mosquitto_directives
from tests.unit.test_compose import code_metric_names, metric_names_in

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "alerts.yml"
RULE_TESTS = ROOT / "monitoring" / "alerts.test.yml"
RUNBOOKS = ROOT / "docs" / "alerts.md"
MOSQUITTO_CONF = ROOT / "mosquitto" / "mosquitto.conf"

#: Every alert issue #16 asks for, with its severity.
EXPECTED = {
    "ServiceDown": "critical",
    "TargetDown": "warning",
    "BridgeNotConnected": "critical",
    "ServiceNotReady": "critical for the bridge, else warning",
    "SensorSilent": "warning",
    "ConsumerLagGrowing": "warning",
    "RejectionRateJump": "warning",
    "PredictionErrors": "warning",
    "BrokerQueueFilling": "warning",
    "BrokerQueueNearLimit": "critical",
    "MongoWriteSlow": "warning",
    "ModelChanged": "info",
    "AlertDeliveryFailing": "warning",
}
#: Alerts whose severity depends on the job: {alert: {job: severity}}, "*" for every other job. The
#: rule's severity is then a template; its promtool cases must show each severity.
SEVERITY_BY_JOB = {"ServiceNotReady": {"server": "critical", "*": "warning"}}
#: Series from elsewhere than the pipeline's code: Prometheus's own, and Alertmanager's (its /metrics is
#: checked for it in tests/e2e/test_alerting.py).
EXTERNAL_SERIES = {"up", "alertmanager_notifications_failed_total"}
#: PromQL functions the rules use beyond those tests/unit/test_compose.py knows.
MORE_PROMQL_WORDS = {"le"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "no promtool: run `bash localstack/install.sh` (Debian's prometheus package)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)


def alerting_rules() -> dict[str, dict[str, Any]]:
    """{alert name: rule} of monitoring/alerts.yml; fails on a name used twice."""
    rules: dict[str, dict[str, Any]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in rules, f"{RULES}: alert {rule['alert']} is defined twice"
                rules[rule["alert"]] = rule
    return rules


def recording_rules() -> dict[str, dict[str, Any]]:
    """{recorded series: rule} of monitoring/alerts.yml; fails on a name recorded twice."""
    rules: dict[str, dict[str, Any]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                assert rule["record"] not in rules, f"{RULES}: {rule['record']} is recorded twice"
                rules[rule["record"]] = rule
    return rules


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """{anchor: text} of every heading of docs/alerts.md, each with its text up to the next heading."""
    parts = re.split(r"^#{1,6} (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return {github_anchor(title): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


# --- promtool ------------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, f"promtool check rules:\n{result.stdout}{result.stderr}"
    count = len(alerting_rules()) + len(recording_rules())
    assert f"SUCCESS: {count} rules found" in result.stdout, result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout, result.stdout


def test_the_unit_tests_load_this_rule_file() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert [(RULE_TESTS.parent / f).resolve() for f in tests["rule_files"]] == [RULES.resolve()]


# --- every alert: defined, labelled, tested, documented ---------------------------------------


def test_the_alerts_are_the_expected_ones() -> None:
    assert set(alerting_rules()) == set(EXPECTED)


def expected_severity(name: str, job: str | None) -> str:
    """The severity alert ``name`` must have when it fires for ``job``."""
    by_job = SEVERITY_BY_JOB.get(name)
    if by_job is None:
        return EXPECTED[name]
    return by_job.get(job or "", by_job["*"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_alert_has_severity_summary_and_runbook(name: str) -> None:
    rule = alerting_rules()[name]
    severity = rule.get("labels", {}).get("severity", "")
    if name in SEVERITY_BY_JOB:
        for job, level in SEVERITY_BY_JOB[name].items():
            assert level in severity, f"{name}: severity never {level}"
            assert job == "*" or f'"{job}"' in severity, f"{name}: the severity does not depend on job {job}"
    else:
        assert severity == EXPECTED[name], f"{name}: severity"
    summary = rule.get("annotations", {}).get("summary", "")
    assert "{{ $labels." in summary, f"{name}: the summary must say where ({{{{ $labels.instance }}}} or the like)"
    assert rule["annotations"].get("runbook") == f"docs/alerts.md#{name.lower()}", f"{name}: runbook"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_alert_is_unit_tested_firing_and_not_firing(name: str) -> None:
    cases = [
        case
        for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
        if case["alertname"] == name
    ]
    firing = [case for case in cases if case.get("exp_alerts")]
    quiet = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"{RULE_TESTS}: no case where {name} fires"
    assert quiet, f"{RULE_TESTS}: no case where {name} does not fire"
    severities = set()
    for case in firing:
        for alert in case["exp_alerts"]:
            labels = alert.get("exp_labels", {})
            assert labels.get("severity") == expected_severity(name, labels.get("job")), f"{name}: test its labels"
            assert set(alert.get("exp_annotations", {})) == {"summary", "runbook"}, f"{name}: test its annotations"
            severities.add(labels["severity"])
    assert severities == set(SEVERITY_BY_JOB.get(name, {"*": EXPECTED[name]}).values()), (
        f"{name}: firing cases show severities {sorted(severities)}"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_alert_has_a_runbook_section(name: str) -> None:
    anchor = alerting_rules()[name]["annotations"]["runbook"].partition("#")[2]
    sections = runbook_sections()
    assert anchor in sections, f"{RUNBOOKS}: no heading for #{anchor} (### {name})"
    body = sections[anchor]
    for part in ("**What it means.**", "**What to check.**", "**How to fix.**"):
        assert part in body, f"{RUNBOOKS}, {name}: no {part}"


# --- the rules read what exists ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED) + sorted(recording_rules()))
def test_each_alert_reads_only_metrics_that_exist(name: str) -> None:
    """Each alert, and each recording rule, reads series the services expose or a recording rule records."""
    expr = {**alerting_rules(), **recording_rules()}[name]["expr"]
    known = set(code_metric_names()) | EXTERNAL_SERIES
    recorded = set(recording_rules())
    names = metric_names_in(expr) - MORE_PROMQL_WORDS
    assert names or "__name__" in expr, f"{name}: found no metric in {expr!r}"
    if name in recorded:
        assert not names & recorded, f"{name} reads a recorded series: record it from what the services expose"
    unknown = names - known - recorded
    assert not unknown, f"{name} reads {sorted(unknown)}, which no service exposes (*/metrics.py) nor a rule records"
    # A counter (or a histogram's buckets) means something only as a rate or an increase.
    for metric in names:
        if metric.endswith(("_total", "_bucket")):
            for use in re.finditer(rf"(?<![\w:]){metric}(?![\w:])", expr):
                assert re.search(r"\b(rate|increase)\(\s*$", expr[: use.start()]), (
                    f"{name}: counter {metric} needs rate() or increase() at each use"
                )
    # Metrics picked by a regular expression on their name: each one it picks exists and is a counter.
    for use in re.finditer(r'\{__name__\s*=~\s*"([^"]+)"\}', expr):
        matched = {metric for metric in known if re.fullmatch(use.group(1), metric)}
        assert matched, f"{name}: {use.group(0)} matches no metric a service exposes"
        assert all(m.endswith("_total") for m in matched), f"{name}: {use.group(0)} picks {matched}"
        assert re.search(r"\b(rate|increase)\(\s*$", expr[: use.start()]), f"{name}: rate() of {use.group(0)}"


def test_the_rejection_rate_counts_the_bridges_and_the_model_services_rejections() -> None:
    expr = alerting_rules()["RejectionRateJump"]["expr"]
    patterns = set(re.findall(r'__name__\s*=~\s*"([^"]+)"', expr))
    assert len(patterns) == 1, patterns
    (pattern,) = patterns
    matched = {metric for metric in code_metric_names() if re.fullmatch(pattern, metric)}
    assert matched == {"pipeline_rejections_total", "pipeline_model_rejections_total"}, matched


@pytest.mark.parametrize(("name", "share"), [("BrokerQueueFilling", 0.5), ("BrokerQueueNearLimit", 0.8)])
def test_the_broker_queue_thresholds_are_shares_of_mosquittos_limits(name: str, share: float) -> None:
    settings = dict(mosquitto_directives(MOSQUITTO_CONF.read_text()))
    expr = alerting_rules()[name]["expr"]
    for metric, key in (
        ("pipeline_broker_stored_messages", "max_queued_messages"),
        ("pipeline_broker_stored_bytes", "max_queued_bytes"),
    ):
        found = re.findall(rf"{metric}\s*>\s*([0-9.]+)\s*\*\s*([0-9]+)", expr)
        assert found == [(str(share), settings[key])], (
            f"{name}: expected `{metric} > {share} * {settings[key]}` ({key} in {MOSQUITTO_CONF}), found {found}"
        )
