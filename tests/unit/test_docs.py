"""The reference pages generated from the code are current, and the README stays a front door."""

from __future__ import annotations

import re

import pytest

from tracker.cli import main
from tracker.docs import PAGES, SETTINGS
from tracker.metrics import Metrics
from tracker.settings import REPO_ROOT, Settings

DOCS = REPO_ROOT / "docs"


def test_every_setting_is_described_once() -> None:
    described = [name for fields in SETTINGS.values() for name in fields]
    assert len(described) == len(set(described))
    assert set(described) == set(Settings.model_fields), "describe new settings in tracker/docs.py"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_generated_page_is_current(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["docs", page]) == 0
    assert capsys.readouterr().out == (DOCS / f"{page}.md").read_text(), (
        f"docs/{page}.md is stale: .venv/bin/tracker docs {page} > docs/{page}.md"
    )


def test_metrics_page_names_every_metric_with_its_labels() -> None:
    from prometheus_client import CollectorRegistry

    page = (DOCS / "metrics.md").read_text()
    assert "| `tracker_consumer_lag_messages` | gauge | topic, partition |" in page
    assert "| `tracker_journey_results_total` | counter | journey, kind, stage |" in page
    rows = re.findall(r"^\| `(tracker_\w+)`", page, re.M)
    registry = CollectorRegistry()
    Metrics(registry)
    assert len(rows) == len(set(rows)) == len(list(registry.collect()))


def test_readme_is_a_front_door_that_links_to_existing_pages() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    first_commands = re.findall(r"^(make \w+)", readme, re.M)[:2]
    assert first_commands == ["make demo", "make test"]
    for link in re.findall(r"\]\((docs/[\w./-]+?)(?:#[\w-]+)?\)", readme):
        assert (REPO_ROOT / link).is_file(), link
