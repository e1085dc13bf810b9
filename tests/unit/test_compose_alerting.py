"""Alertmanager under Compose: the service, its configuration template and entry point, Prometheus's side.

No Docker engine runs here, so: the service as the real Compose CLI resolves it
(`docker compose config`, built by localstack/install.sh), the entry point run
with the machine's sh, and every configuration it renders (and every example of
docs/alerts.md) checked by Debian's amtool, from the prometheus-alertmanager
package. The official image runs the same script with busybox sh.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_compose import (
    COMPOSE_FILE,
    PROMETHEUS_CONFIG,
    SERVICES,
    compose_config,
    depends_on,
    resolved,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "monitoring" / "alertmanager.yml"
ENTRYPOINT = ROOT / "monitoring" / "alertmanager" / "entrypoint.sh"
RULES = ROOT / "monitoring" / "alerts.yml"
DOCS = ROOT / "docs" / "alerts.md"
#: The stand-in for Alertmanager: prints its arguments, so a test sees what the entry point execs.
FAKE_BINARY = '#!/bin/sh\necho "$@"\n'
SLACK_LIKE = "https://hooks.slack.com/services/T0000/B0000/XXXXXXXX"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    assert binary is not None, "no amtool: run `bash localstack/install.sh` (Debian's prometheus-alertmanager package)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def entrypoint(tmp_path: Path, url: str | None, template: Path = TEMPLATE) -> subprocess.CompletedProcess[str]:
    """Run the entry point with ALERT_WEBHOOK_URL=url (None: unset), rendering into tmp_path/run/."""
    fake = tmp_path / "alertmanager"
    fake.write_text(FAKE_BINARY)
    fake.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "ALERTMANAGER_TEMPLATE": str(template),
        "ALERTMANAGER_CONFIG": str(tmp_path / "run" / "alertmanager.yml"),
        "ALERTMANAGER_BIN": str(fake),
    }
    if url is not None:
        env["ALERT_WEBHOOK_URL"] = url
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "--storage.path=/alertmanager"], env=env, capture_output=True, text=True, check=False
    )


def webhook_urls(config: dict[str, Any]) -> list[str]:
    return [c["url"] for r in config["receivers"] for c in r.get("webhook_configs", [])]


def script_default(variable: str) -> str:
    """The default the entry point gives a variable (``name=${VARIABLE:-default}``)."""
    found = re.findall(rf"\$\{{{variable}:-([^}}]+)\}}", ENTRYPOINT.read_text())
    assert len(found) == 1, f"{ENTRYPOINT}: no single default for {variable}"
    return str(found[0])


# --- the service ---------------------------------------------------------------------------


def test_alertmanager_is_a_pinned_official_image_in_the_monitoring_profile() -> None:
    service = SERVICES.get("alertmanager")
    assert service is not None, "docker-compose.yml has no service alertmanager"
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", service["image"]), service["image"]
    assert service.get("profiles") == ["monitoring"], 'service alertmanager: profiles: ["monitoring"]'
    assert service.get("healthcheck", {}).get("test"), "service alertmanager: add a healthcheck"
    for name, other in SERVICES.items():
        if name != "alertmanager":
            assert "alertmanager" not in depends_on(other), f"service {name} must start without Alertmanager"


def test_alertmanager_runs_the_entry_point_on_the_template(tmp_path: Path) -> None:
    service = resolved(tmp_path, options=("--profile", "monitoring"))["services"]["alertmanager"]
    assert service["entrypoint"] == ["/bin/sh", "/etc/alertmanager/entrypoint.sh"], service["entrypoint"]
    binds = {v["target"]: v for v in service["volumes"] if v["type"] == "bind"}
    template = script_default("ALERTMANAGER_TEMPLATE")
    for target, source in ((template, TEMPLATE), ("/etc/alertmanager/entrypoint.sh", ENTRYPOINT)):
        assert target in binds and binds[target]["source"] == str(source), f"mount {source} at {target}"
        assert binds[target].get("read_only"), f"mount {source} read-only"
    # The rendered copy (it holds the URL) goes to a tmpfs, not to a volume or the image.
    rendered = script_default("ALERTMANAGER_CONFIG")
    assert str(Path(rendered).parent) in service.get("tmpfs", []), f"service alertmanager: tmpfs for {rendered}"
    assert script_default("ALERTMANAGER_BIN") == "/bin/alertmanager", "the official image's binary"
    # Silences and the notification log live in the image's data folder, on a volume.
    assert "--storage.path=/alertmanager" in service["command"]
    assert any(v["type"] == "volume" and v["target"] == "/alertmanager" for v in service["volumes"])
    assert "9093" in " ".join(service["healthcheck"]["test"])


@pytest.mark.parametrize("url", ["", SLACK_LIKE, "https://alerts.example.com/hook?token=a$b&team=ops"])
def test_alert_webhook_url_reaches_the_container_from_env_as_written(tmp_path: Path, url: str) -> None:
    # Single quotes in .env: Compose takes $ and & as they are (docs/alerts.md says to write it so).
    dotenv: dict[str, str | None] = {"ALERT_WEBHOOK_URL": f"'{url}'"} if url else {}
    service = resolved(tmp_path, options=("--profile", "monitoring"), dotenv=dotenv)["services"]["alertmanager"]
    # `config` writes a literal $ as $$.
    assert service["environment"]["ALERT_WEBHOOK_URL"].replace("$$", "$") == url


def test_prometheus_evaluates_the_rules_and_sends_alerts_to_alertmanager(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config.get("rule_files") == ["alerts.yml"], f"{PROMETHEUS_CONFIG}: rule_files: [alerts.yml]"
    targets = [t for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for t in s["targets"]]
    assert targets == ["alertmanager:9093"], targets
    prometheus = resolved(tmp_path, options=("--profile", "monitoring"))["services"]["prometheus"]
    binds = {v["target"]: v["source"] for v in prometheus["volumes"] if v["type"] == "bind"}
    # rule_files are relative to the configuration file's folder.
    config_dir = Path(next(t for t, s in binds.items() if s == str(PROMETHEUS_CONFIG))).parent
    assert binds.get(str(config_dir / "alerts.yml")) == str(RULES), f"mount {RULES} beside prometheus.yml"
    # AlertDeliveryFailing reads Alertmanager's own metrics.
    scraped = [t for job in config["scrape_configs"] for s in job.get("static_configs", []) for t in s["targets"]]
    assert "alertmanager:9093" in scraped, f"{PROMETHEUS_CONFIG}: scrape alertmanager:9093"


# --- the entry point and the template --------------------------------------------------------


def test_the_entry_point_is_posix_sh() -> None:
    result = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("url", [SLACK_LIKE, "http://127.0.0.1:9/a?x=1&y=2\\z%20&w=$HOME"])
def test_the_entry_point_puts_the_url_in_place_and_alertmanager_accepts_it(tmp_path: Path, url: str) -> None:
    result = entrypoint(tmp_path, url)
    rendered = tmp_path / "run" / "alertmanager.yml"
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"--config.file={rendered}", "--storage.path=/alertmanager"], result.stdout
    config = yaml.safe_load(rendered.read_text())
    assert webhook_urls(config) == [url], "the URL must arrive intact, & and \\ and $ included"
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600, "the rendered file holds the URL: owner only"
    check = amtool("check-config", str(rendered))
    assert check.returncode == 0, check.stdout + check.stderr


def test_without_a_url_alertmanager_starts_and_says_it_delivers_nothing(tmp_path: Path) -> None:
    result = entrypoint(tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert "ALERT_WEBHOOK_URL is not set" in result.stderr
    rendered = tmp_path / "run" / "alertmanager.yml"
    config = yaml.safe_load(rendered.read_text())
    assert webhook_urls(config) == [] and config["route"]["receiver"] == "webhook"
    check = amtool("check-config", str(rendered))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://files.example.com/x", "must start with http:// or https://"),
        ("hooks.example.com/x", "must start with http:// or https://"),
        ("https://", "must start with http:// or https://"),
        ("https://example.com/a b", "must not hold a quote (') or white space"),
        ("https://example.com/it's", "must not hold a quote (') or white space"),
        ("https://example.com/a\nroute: {}", "must not hold a quote (') or white space"),
    ],
)
def test_the_entry_point_refuses_a_url_it_cannot_place(tmp_path: Path, url: str, says: str) -> None:
    result = entrypoint(tmp_path, url)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert result.stdout == "", "Alertmanager must not start"
    assert not (tmp_path / "run").exists(), "nothing is written"


def test_the_template_itself_is_refused() -> None:
    """Run unrendered (say, with the image's own entry point), the placeholder is not a URL: it fails at once."""
    assert "'${ALERT_WEBHOOK_URL}'" in TEMPLATE.read_text()
    result = amtool("check-config", str(TEMPLATE))
    assert result.returncode != 0, result.stdout


def test_notifications_are_grouped_by_alert_name_and_resolutions_are_sent(tmp_path: Path) -> None:
    entrypoint(tmp_path, SLACK_LIKE)
    config = yaml.safe_load((tmp_path / "run" / "alertmanager.yml").read_text())
    route = config["route"]
    assert route["group_by"] == ["alertname"]
    seconds = {"s": 1, "m": 60, "h": 3600}

    def duration(text: str) -> int:
        return sum(int(n) * seconds[unit] for n, unit in re.findall(r"(\d+)([smh])", text))

    assert 0 < duration(route["group_wait"]) <= 60
    assert 60 <= duration(route["group_interval"]) <= 15 * 60
    assert duration(route["repeat_interval"]) >= 3600
    # Every alert goes to the webhook: the routes below change timings, not where they go.
    assert all(child.get("receiver", "webhook") == "webhook" for child in route.get("routes", []))
    (hook,) = [c for r in config["receivers"] for c in r.get("webhook_configs", [])]
    assert hook["send_resolved"] is True


# --- the examples of docs/alerts.md ---------------------------------------------------------------


def doc_blocks(first_line: str) -> list[str]:
    """The YAML blocks of docs/alerts.md whose first line starts with ``first_line``."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", DOCS.read_text(), flags=re.S | re.M)
    return [block for block in blocks if block.startswith(first_line)]


def test_the_docs_receiver_examples_are_configurations_alertmanager_accepts(tmp_path: Path) -> None:
    examples = doc_blocks("# monitoring/alertmanager.yml")
    kinds = {kind for block in examples for kind in ("email_configs", "slack_configs") if kind in block}
    assert kinds == {"email_configs", "slack_configs"}, f"{DOCS}: an e-mail and a Slack example, found {kinds}"
    base = TEMPLATE.read_text()
    for n, block in enumerate(examples):
        # Each example replaces the sections of monitoring/alertmanager.yml it shows.
        sections = {key: None for key in yaml.safe_load(block)}
        kept = [part for part in re.split(r"^(?=\S)", base, flags=re.M) if part.split(":")[0].strip() not in sections]
        template = tmp_path / f"example-{n}.yml"
        template.write_text("".join(kept) + "\n" + block)
        for url in (SLACK_LIKE, None):
            result = entrypoint(tmp_path, url, template)
            assert result.returncode == 0, result.stderr
            check = amtool("check-config", str(tmp_path / "run" / "alertmanager.yml"))
            assert check.returncode == 0, f"{DOCS}, example {n + 1}, URL {url}:\n{check.stdout}{check.stderr}"


def test_the_docs_override_gives_alertmanager_the_smtp_password_file(tmp_path: Path) -> None:
    (override_text,) = doc_blocks("# docker-compose.override.yml")
    (email,) = [b for b in doc_blocks("# monitoring/alertmanager.yml") if "email_configs" in b]
    (password_file,) = re.findall(r"auth_password_file:\s*(\S+)", email)
    override = ROOT / f".test-override-{uuid.uuid4().hex[:8]}.yml"
    override.write_text(override_text)
    try:
        result = compose_config(
            tmp_path,
            COMPOSE_FILE,
            override,
            args=("--format", "json"),
            options=("--profile", "monitoring"),
            environ={"ALERT_SMTP_PASSWORD": "not-a-real-password"},
        )
    finally:
        override.unlink()
    assert result.returncode == 0, result.stderr
    project = yaml.safe_load(result.stdout)
    secrets = project["services"]["alertmanager"].get("secrets", [])
    assert [s["target"] for s in secrets] == [password_file], secrets
    (name,) = [s["source"] for s in secrets]
    assert project["secrets"][name].get("environment") == "ALERT_SMTP_PASSWORD"
    assert "not-a-real-password" not in result.stdout, "the password must stay out of the configuration"


def test_the_docs_silence_commands_are_amtools() -> None:
    """Each `amtool silence ...` of docs/alerts.md uses a subcommand and flags amtool has (the e2e test runs them)."""
    commands = re.findall(r"^docker compose exec alertmanager amtool (.+)$", DOCS.read_text(), flags=re.M)
    words = [command.split() for command in commands]
    assert sorted(w[2] for w in words if w[1] == "silence") == ["add", "expire", "query"], commands
    for command in words:
        assert command[0] == "--alertmanager.url=http://localhost:9093", command
        help_text = amtool(command[1], command[2], "--help")
        assert help_text.returncode == 0, help_text.stderr
        for flag in (word.split("=")[0] for word in command[3:] if word.startswith("--")):
            assert flag in help_text.stdout + help_text.stderr, f"amtool {command[1]} {command[2]}: no {flag}"
