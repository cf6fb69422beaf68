"""The production files are only read by tools that cannot run here: check them statically."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tracker.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "docker-compose.yml"


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
        assert re.fullmatch(r"\d+(\.\d+)+", tag), f"{name}: tag {tag} is not a version"


def test_compose_ports_match_the_settings_the_services_get() -> None:
    for name, svc in _tracker_services(_compose()).items():
        env = svc["environment"]
        role = svc["command"][0]
        port = env[f"TRACKER_{role.upper()}_PORT"]
        for mapping in svc.get("ports", []):
            assert mapping.split(":")[-1] == port, f"{name}: {mapping} vs port {port}"
        assert env["TRACKER_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_dockerfile_installs_the_package_and_its_entry_point() -> None:
    text = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-", text, re.M)
    assert 'ENTRYPOINT ["tracker"]' in text
    for path in re.findall(r"^COPY (\S+)", text, re.M):
        assert Path(REPO_ROOT, path).exists(), path


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
