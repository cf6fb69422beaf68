"""The files that ship inside the package: journey examples, the embedded broker's Maven pom and
logging config, the Grafana dashboards and the Prometheus alert rules.

The installed package finds them here (``importlib.resources``), from any working directory.
``deploy/`` in the source tree holds the same files for people who copy them into their own set-up;
a test keeps the two byte for byte equal, and ``tracker defaults DIR`` writes these copies out.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from tracker.errors import ConfigError

# Every shipped file, relative to this package (and to deploy/ in the source tree).
FILES = (
    "journeys.example.yaml",
    "journeys.demo.yaml",
    "kafka/pom.xml",
    "kafka/log4j2.properties",
    "grafana/dashboards/analyst.json",
    "grafana/dashboards/journeys-live.json",
    "grafana/dashboards/pipeline-health.json",
    "prometheus/alerts.yml",
)


def path(name: str) -> Path:
    """The shipped file ``name`` on disk (Java and users need a real path, not a stream)."""
    resource = files(__name__).joinpath(name)
    if not isinstance(resource, Path) or not resource.is_file():
        raise ConfigError(f"the packaged default {name!r} is not a file on disk: {resource}")
    return resource


def write(target: Path) -> list[Path]:
    """Copy every shipped file under ``target`` (same relative paths); return what was written."""
    written = []
    for name in FILES:
        out = target / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(path(name).read_bytes())
        written.append(out)
    return written
