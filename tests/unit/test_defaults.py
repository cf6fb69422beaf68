"""The files shipped in the package are the ones deploy/ offers for copying, and are complete."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tracker import defaults
from tracker.cli import main
from tracker.settings import REPO_ROOT, Settings

PACKAGE = Path(defaults.__file__).parent


def test_every_packaged_default_equals_its_deploy_copy() -> None:
    shipped = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"}
    }
    assert shipped == set(defaults.FILES)
    for name in defaults.FILES:
        packaged = defaults.path(name).read_bytes()
        deployed = (REPO_ROOT / "deploy" / name).read_bytes()
        assert packaged == deployed, (
            f"deploy/{name} differs from tracker/defaults/{name}; edit the package copy and run "
            "`tracker defaults deploy`"
        )


def test_default_settings_point_into_the_package_not_the_working_directory() -> None:
    settings = Settings()
    assert settings.journeys_file == defaults.path("journeys.example.yaml")
    assert settings.journeys_file.is_absolute() and settings.journeys_file.is_file()
    assert PACKAGE not in settings.kafka_home.parents  # jars never go into site-packages


def test_kafka_jars_go_to_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Settings().kafka_home == tmp_path / "touchpoint-tracker" / "kafka"


def test_defaults_command_writes_every_file(tmp_path: Path) -> None:
    assert main(["defaults", str(tmp_path / "mine")]) == 0
    for name in defaults.FILES:
        assert (tmp_path / "mine" / name).read_bytes() == defaults.path(name).read_bytes()


def test_embedded_warehouse_without_chdb_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tracker.errors import ConfigError
    from tracker.warehouse.client import Warehouse

    monkeypatch.setitem(sys.modules, "chdb", None)  # as if the [embedded] extra were left out
    with pytest.raises(ConfigError, match=r"touchpoint-tracker\[embedded\]") as caught:
        Warehouse.from_settings(Settings(data_dir=tmp_path))
    assert caught.value.field == "clickhouse_url"
    server = Warehouse.from_settings(
        Settings(data_dir=tmp_path, clickhouse_url="http://ch:8123")  # type: ignore[arg-type]
    )
    assert not server.embedded
