"""A fresh embedded broker starts whatever its generated cluster id looks like."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.kafka import broker as broker_module
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import REPO_ROOT

pytestmark = pytest.mark.integration


def test_a_cluster_id_beginning_with_a_dash_formats_and_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dashed = "-AbCdEfGhIjKlMnOpQrStU"
    monkeypatch.setattr(broker_module, "cluster_id", lambda: dashed)
    with EmbeddedKafka(tmp_path / "k", kafka_home=REPO_ROOT / "deploy" / "kafka", heap="256m"):
        meta = (tmp_path / "k" / "logs" / "meta.properties").read_text()
    assert f"cluster.id={dashed}" in meta.splitlines()
