"""The production files are only read by tools that cannot run here: check them statically."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tracker.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
# The Compose Specification's JSON schema as the pinned check-jsonschema package ships it (read
# as a file: importing that package is not needed and its CLI wants a newer click than faust's).
COMPOSE_SCHEMA = Path("builtin_schemas", "vendor", "compose-spec.json")
PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
GRAFANA = REPO_ROOT / "deploy" / "grafana"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _tracker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith("touchpoint-tracker")
    }


def test_compose_parses_and_has_the_production_roles() -> None:
    compose = _compose()
    assert {"kafka", "clickhouse", "collector", "worker-1", "worker-2"} <= set(compose["services"])
    roles = sorted(svc["command"][0] for svc in _tracker_services(compose).values())
    assert roles == ["collector", "worker", "worker"]


def test_compose_names_only_settings_the_code_reads() -> None:
    known = {f"TRACKER_{name.upper()}" for name in Settings.model_fields}
    for name, svc in _tracker_services(_compose()).items():
        env = svc["environment"]
        unknown = {k for k in env if k.startswith("TRACKER_")} - known
        assert not unknown, f"{name} sets settings the code does not read: {unknown}"
        Settings.model_validate({k[len("TRACKER_") :].lower(): v for k, v in env.items()})


def test_compose_images_are_pinned() -> None:
    for name, svc in _compose()["services"].items():
        image = str(svc["image"])
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest", f"{name}: image {image} is not pinned"
        assert re.fullmatch(r"v?\d+(\.\d+)+", tag), f"{name}: tag {tag} is not a version"


def test_compose_ports_match_the_settings_the_services_get() -> None:
    for name, svc in _tracker_services(_compose()).items():
        env = svc["environment"]
        role = svc["command"][0]
        port = env[f"TRACKER_{role.upper()}_PORT"]
        for mapping in svc.get("ports", []):
            assert mapping.split(":")[-1] == port, f"{name}: {mapping} vs port {port}"
        assert env["TRACKER_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_compose_file_follows_the_compose_specification() -> None:
    import jsonschema

    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations, "pip install '.[dev]'"
    schema = json.loads(Path(spec.submodule_search_locations[0], COMPOSE_SCHEMA).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)
    # The schema can fail: a misspelt service key is refused.
    broken = _compose()
    broken["services"]["collector"]["restrat"] = "always"
    assert not validator.is_valid(broken)


def test_tracker_services_restart_report_health_and_have_what_their_role_needs() -> None:
    from tracker import __version__
    from tracker.core.journeys.definition import load

    compose = _compose()
    for name, svc in compose["services"].items():
        assert svc.get("restart") == "unless-stopped", f"{name} has no restart policy"
    for name, svc in _tracker_services(compose).items():
        env, role = svc["environment"], svc["command"][0]
        assert svc["image"] == f"touchpoint-tracker:{__version__}", name
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"http://127.0.0.1:{env[f'TRACKER_{role.upper()}_PORT']}/health" in probe, name
        if role != "worker":
            continue
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        journeys = mounts[env["TRACKER_JOURNEYS_FILE"]]
        assert load(REPO_ROOT / journeys), f"{name}: {journeys}"
        volume = mounts[env["TRACKER_DATA_DIR"]]
        assert volume in compose["volumes"], f"{name}: data dir on {volume}"
    workers = [s for s in _tracker_services(compose).values() if s["command"][0] == "worker"]
    assert len({v for w in workers for v in w["volumes"] if "/var/lib" in v}) == len(workers)


def _dockerfile_value(text: str, name: str) -> str:
    found = re.search(rf"\b{name}=(\S+)", text)
    assert found, name
    return found.group(1)


def test_dockerfile_installs_the_server_package_as_an_unprivileged_user() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-", text, re.M)
    assert 'ENTRYPOINT ["tracker"]' in text
    # The server image talks to ClickHouse and Kafka servers: no chdb extra, no broker jars.
    (install,) = re.findall(r"^RUN pip install .*", text, re.M)
    assert re.search(r"\s\.(\s|$)", install) and "[embedded]" not in install
    assert "deploy" not in " ".join(re.findall(r"^COPY .*", text, re.M))
    # The data directory exists and belongs to the user the processes run as.
    data_dir = _dockerfile_value(text, "TRACKER_DATA_DIR")
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert user not in {"root", "0"}
    assert re.search(rf"install -d -o {user} -g {user} .*{re.escape(data_dir)}", text)
    # Everything copied is in the build context; .dockerignore keeps the rest out.
    allowed = {line[1:].rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text()
               .splitlines() if line.startswith("!")}  # fmt: skip
    assert "*" in (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for copy in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in copy.split():
            assert Path(REPO_ROOT, path).exists(), path
            assert path.rstrip("/") in allowed, f"{path} is excluded by .dockerignore"


def test_tls_without_sasl_reaches_the_worker_and_the_kafka_clients() -> None:
    import faust

    from streams.app import _credentials
    from tracker.kafka.client import client_options

    tls = Settings(kafka_security_protocol="SSL")
    creds = _credentials(tls)
    assert isinstance(creds, faust.SSLCredentials) and creds.context is not None
    assert client_options(tls, "broker:9093")["ssl_context"] is not None
    assert "ssl_context" not in client_options(Settings(), "broker:9092")


def test_worker_takes_sasl_credentials_from_the_settings() -> None:
    from streams.app import _credentials

    assert _credentials(Settings()) is None
    creds = _credentials(
        Settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="tracker",
            kafka_sasl_password="s3cret",  # type: ignore[arg-type]
        )
    )
    assert creds is not None
    assert (creds.username, creds.password, str(creds.mechanism.value)) == (
        "tracker", "s3cret", "SCRAM-SHA-512",
    )  # fmt: skip
    assert creds.ssl_context is not None


# -- Prometheus and Grafana ------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _datasources() -> list[dict[str, Any]]:
    files = sorted((GRAFANA / "provisioning" / "datasources").glob("*.yml"))
    assert files
    return [ds for f in files for ds in _yaml(f)["datasources"]]


def _dashboards() -> dict[str, dict[str, Any]]:
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    return {f.name: json.loads(f.read_text()) for f in files}


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, also those inside collapsed rows."""
    return [q for p in panels for q in (p, *_panels(p.get("panels", [])))]


def test_prometheus_scrapes_the_compose_services_on_the_settings_ports() -> None:
    compose = _compose()
    config = _yaml(PROMETHEUS / "prometheus.yml")
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    tracker = _tracker_services(compose)
    collector_port = tracker["collector"]["environment"]["TRACKER_COLLECTOR_PORT"]
    worker_ports = {n: s["environment"]["TRACKER_WORKER_PORT"] for n, s in tracker.items()
                    if s["command"][0] == "worker"}  # fmt: skip
    assert collector_port == str(Settings().collector_port)
    assert set(worker_ports.values()) == {str(Settings().worker_port)}
    assert targets["tracker-collector"] == [f"collector:{collector_port}"]
    assert sorted(targets["tracker-worker"]) == sorted(f"{n}:{p}" for n, p in worker_ports.items())
    for path in config["rule_files"]:
        assert (PROMETHEUS / path).is_file(), path
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in mounts
    assert (
        "--config.file=/etc/prometheus/prometheus.yml"
        in compose["services"]["prometheus"]["command"]
    )


def test_alert_rules_are_valid_and_explained() -> None:
    rules = [r for g in _yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    assert {"TrackerDropOffRateRising", "TrackerIngestStalled", "TrackerConsumerLagGrowing",
            "TrackerSinkFailing"} <= {a["alert"] for a in alerts}  # fmt: skip
    for alert in alerts:
        assert alert["for"] and alert["labels"]["severity"] in {"warning", "critical"}, alert
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert
    promtool = shutil.which("promtool")
    if promtool is None:  # without the Debian package: the YAML checks above only
        return
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_grafana_datasources_match_the_compose_services() -> None:
    compose = _compose()
    by_type = {ds["type"]: ds for ds in _datasources()}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert compose["services"]["prometheus"]["ports"] == ["9090:9090"]
    ch = by_type["grafana-clickhouse-datasource"]["jsonData"]
    server = compose["services"]["clickhouse"]
    assert (ch["host"], ch["protocol"]) == ("clickhouse", "http")
    assert f"{ch['port']}:{ch['port']}" in server["ports"]
    assert ch["username"] == server["environment"]["CLICKHOUSE_USER"]
    assert ch["defaultDatabase"] == Settings().clickhouse_database
    grafana = compose["services"]["grafana"]
    password_var = by_type["grafana-clickhouse-datasource"]["secureJsonData"]["password"]
    assert (
        grafana["environment"][password_var.lstrip("$")]
        == (server["environment"]["CLICKHOUSE_PASSWORD"])
    )
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


def test_grafana_provisions_every_dashboard_file_in_the_folder() -> None:
    providers = _yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    mounts = dict(v.split(":")[1::-1] for v in _compose()["services"]["grafana"]["volumes"]
                  if v.startswith("./"))  # fmt: skip
    assert [p["type"] for p in providers] == ["file"]
    # The provider reads a folder (every *.json in it), mounted from deploy/grafana/dashboards.
    assert mounts[providers[0]["options"]["path"]] == "./deploy/grafana/dashboards"
    assert {"journeys-live.json", "pipeline-health.json"} <= set(_dashboards())


def test_dashboards_are_valid_with_unique_ids_and_known_datasources() -> None:
    uids = {ds["uid"] for ds in _datasources()}
    dashboard_uids = []
    for name, board in _dashboards().items():
        dashboard_uids.append(board["uid"])
        panels = _panels(board["panels"])
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels:
            for ref in [
                panel.get("datasource"),
                *(t.get("datasource") for t in panel.get("targets", [])),
            ]:
                if isinstance(ref, dict):
                    assert ref["uid"] in uids, f"{name} panel {panel['id']}: {ref}"
        for var in board.get("templating", {}).get("list", []):
            if isinstance(var.get("datasource"), dict):
                assert var["datasource"]["uid"] in uids, f"{name} variable {var['name']}"
    assert len(dashboard_uids) == len(set(dashboard_uids))


# Grafana's dashboard JSON schema, derived mechanically at test time from the `Dashboard` type that
# the pinned @grafana/schema npm package ships (Grafana generates that type from the CUE schema of
# the dashboard kind), by the pinned ts-json-schema-generator (2.4.0, the last to run on Node 20);
# both live in tests/sdk, installed by `scripts/setup --test`. Where it and Grafana differ:
# - Grafana stores and serves keys it does not know, and its own editor writes some the type lacks
#   (`definition` on a query variable), so objects are generated open (`--additional-properties`);
#   a misspelt optional key therefore passes.
# - The type makes `annotations` optional and lets a variable's `query` be a string or an object
#   (the Prometheus variable editor saves the object form), so neither is a schema violation; we
#   still require both of our own boards to have an annotation list and a string query, below.
# - `current` of a variable, when present, needs `text` and `value`; Grafana would accept `{}`.
_GRAFANA_TYPES = Path("@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts")
_SCHEMA_GENERATOR = Path("ts-json-schema-generator/bin/ts-json-schema-generator")


@pytest.fixture(scope="module")
def dashboard_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    modules = REPO_ROOT / "tests" / "sdk" / "node_modules"
    node = shutil.which("node")
    assert node and (modules / _GRAFANA_TYPES).is_file(), "run scripts/setup --test"
    out = tmp_path_factory.mktemp("grafana") / "dashboard.schema.json"
    args = ["--path", str(modules / _GRAFANA_TYPES), "--type", "Dashboard", "--out", str(out),
            "--additional-properties", "--no-type-check"]  # fmt: skip
    done = subprocess.run(
        [node, modules / _SCHEMA_GENERATOR, *args], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    schema: dict[str, Any] = json.loads(out.read_text())
    assert schema["$ref"] == "#/definitions/Dashboard"
    return schema


def _schema_errors(schema: dict[str, Any], board: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(board)]


def _our_rule_breaches(board: dict[str, Any]) -> list[str]:
    """The two rules of ours, stricter than Grafana's schema, stated above."""
    breaches = []
    if not isinstance(board.get("annotations", {}).get("list"), list):
        breaches.append("no annotation list")
    for var in board.get("templating", {}).get("list", []):
        if not isinstance(var.get("query", ""), str):
            breaches.append(f"variable {var['name']}: query is not a string")
    return breaches


def test_dashboards_validate_against_grafanas_dashboard_schema(
    dashboard_schema: dict[str, Any],
) -> None:
    for name, board in _dashboards().items():
        problems = _schema_errors(dashboard_schema, board) + _our_rule_breaches(board)
        assert not problems, f"{name}: " + "; ".join(problems)


def _without_annotations(board: dict[str, Any]) -> None:
    del board["annotations"]


def _object_variable_query(board: dict[str, Any]) -> None:
    var = board["templating"]["list"][0]
    var["query"] = {"query": var["query"], "refId": "journey"}


def _without_schema_version(board: dict[str, Any]) -> None:
    del board["schemaVersion"]


def _numeric_variable_query(board: dict[str, Any]) -> None:
    board["templating"]["list"][0]["query"] = 5


def _unknown_variable_type(board: dict[str, Any]) -> None:
    board["templating"]["list"][0]["type"] = "sql"


def _tooltip_out_of_range(board: dict[str, Any]) -> None:
    board["graphTooltip"] = 3


def _panel_position_as_text(board: dict[str, Any]) -> None:
    board["panels"][0]["gridPos"]["w"] = "12"


@pytest.mark.parametrize(
    "defect",
    [
        _without_schema_version,
        _numeric_variable_query,
        _unknown_variable_type,
        _tooltip_out_of_range,
        _panel_position_as_text,
    ],
)
def test_grafanas_dashboard_schema_refuses_a_broken_dashboard(
    dashboard_schema: dict[str, Any], defect: Callable[[dict[str, Any]], None]
) -> None:
    board = _dashboards()["journeys-live.json"]
    assert not _schema_errors(dashboard_schema, board)
    defect(board)
    assert _schema_errors(dashboard_schema, board)


@pytest.mark.parametrize("defect", [_without_annotations, _object_variable_query])
def test_our_rules_refuse_what_grafanas_schema_allows(
    dashboard_schema: dict[str, Any], defect: Callable[[dict[str, Any]], None]
) -> None:
    board = _dashboards()["journeys-live.json"]
    defect(board)
    assert not _schema_errors(dashboard_schema, board)
    assert _our_rule_breaches(board)


def test_dashboards_keep_the_panel_layout_grafana_expects() -> None:
    # Not in the schema: a 24-column panel grid, and Grafana refuses uids over 40 characters.
    for name, board in _dashboards().items():
        assert 8 <= len(board["uid"]) <= 40, f"{name}: uid must be 8 to 40 characters"
        for panel in _panels(board["panels"]):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (name, panel)
