"""The analyst Grafana dashboard, built from the analyst queries in tracker/warehouse/queries.py.

``python -m tracker.warehouse.dashboard > tracker/defaults/grafana/dashboards/analyst.json`` writes
it (copy it to deploy/grafana/dashboards/ too); tests check both files are what this module builds.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tracker.warehouse.queries import QUERIES, render_for_grafana

DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}
DATABASE = "tracker"

# (query name, panel type, width, height); rows of 24 grid units.
PANELS = (
    ("funnel", "barchart", 12, 9),
    ("dropoffs", "table", 12, 9),
    ("pain_before_dropoff", "table", 12, 8),
    ("time_to_convert", "table", 12, 8),
    ("channel_mix", "table", 12, 8),
    ("source_mix", "table", 12, 8),
    ("paths", "table", 24, 10),
    ("customer_timeline", "table", 24, 12),
)


def _panel(panel_id: int, name: str, kind: str, x: int, y: int, w: int, h: int) -> dict[str, Any]:
    query = QUERIES[name]
    panel: dict[str, Any] = {
        "id": panel_id,
        "type": kind,
        "title": query.title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "editorType": "sql",
                "format": 1,
                "queryType": "table",
                "rawSql": render_for_grafana(query, DATABASE),
            }
        ],
        "options": {},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }
    if kind == "barchart":
        panel["options"] = {"xField": "stage", "orientation": "horizontal", "showValue": "auto"}
        panel["transformations"] = [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {
                        "level": True,
                        "dropoff_rate": True,
                        "rate_from_first": True,
                        "rate_from_previous": True,
                    }
                },
            }
        ]
    return panel


def build() -> dict[str, Any]:
    panels = []
    x = y = row_height = 0
    for panel_id, (name, kind, w, h) in enumerate(PANELS, start=1):
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(panel_id, name, kind, x, y, w, h))
        x, row_height = x + w, max(row_height, h)
    return {
        "uid": "tracker-analyst",
        "title": "Touchpoint Tracker: journeys for analysts",
        "description": "Funnels, drop-offs, conversions, channels and paths from ClickHouse.",
        "tags": ["touchpoint-tracker", "clickhouse"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "1m",
        "graphTooltip": 1,
        "time": {"from": "now-7d", "to": "now"},
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "journey",
                    "label": "Journey",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": f"SELECT DISTINCT journey FROM {DATABASE}.journey_funnel "
                    "ORDER BY journey",
                    "definition": "journeys with results",
                    "refresh": 2,
                    "multi": False,
                    "includeAll": False,
                },
                {
                    "name": "customer",
                    "label": "Customer id",
                    "type": "textbox",
                    "query": "",
                },
            ]
        },
        "panels": panels,
    }


def main() -> None:
    sys.stdout.write(json.dumps(build(), indent=2) + "\n")


if __name__ == "__main__":
    main()
