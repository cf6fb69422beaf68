"""Schemathesis against the running collector and real Kafka: requests generated from
``/openapi.json`` (valid and invalid ones) never get a 5xx, and every answer matches the
document."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.checks import negative_data_rejection

from tests.integration.processes import Process
from tracker.collector.app import BATCH_PATHS, SDK_METRICS_PATH
from tracker.collector.openapi import OPENAPI
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def collector_schema(
    kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[schemathesis.BaseSchema]:
    workdir = tmp_path_factory.mktemp("fuzz")
    unique = uuid.uuid4().hex[:10]
    settings = Settings(
        data_dir=workdir / "data", topic_touchpoints=f"touchpoints-{unique}",
        topic_deadletter=f"deadletter-{unique}", collector_port=0, kafka_port=0,
    )  # fmt: skip
    collector = Process("collector", settings, kafka.bootstrap, workdir).wait_ready()
    try:
        yield schemathesis.openapi.from_url(f"{collector.url}/openapi.json")
    finally:
        collector.stop()


# An SDK's report about itself may hold anything: there is no invalid one to generate.
CASES = [
    pytest.param(path, mode, id=f"{path}-{mode}")
    for path in sorted(OPENAPI["paths"])
    for mode in schemathesis.GenerationMode
    if not (path == SDK_METRICS_PATH and mode == schemathesis.GenerationMode.NEGATIVE)
]


@pytest.mark.parametrize(("path", "mode"), CASES)
def test_collector_conforms_to_its_openapi_document(
    collector_schema: schemathesis.BaseSchema, path: str, mode: schemathesis.GenerationMode
) -> None:
    operation = collector_schema[path]["POST"]
    # A batch with some invalid messages is accepted in part, by design (Segment's behaviour): the
    # answer names the rejected ones. Every other invalid request must be refused.
    partial = path in BATCH_PATHS and mode == schemathesis.GenerationMode.NEGATIVE
    excluded = [negative_data_rejection] if partial else []

    @hypothesis.given(case=operation.as_strategy(mode))
    @hypothesis.settings(
        max_examples=25, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )  # fmt: skip
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(session=session, excluded_checks=excluded, timeout=30)

    with requests.Session() as session:
        check()
