"""The analyst queries in one place, used by the CLI, docs/warehouse.md and the Grafana dashboard.

Each query is written with ClickHouse query parameters (``{journey:String}``), so the text in the
docs runs unchanged in ``clickhouse-client --param_journey=shop``. :func:`render` replaces the
parameters with quoted literals for the paths that send plain SQL (the worker's ``/query``
endpoint, chdb); :func:`render_for_grafana` replaces them with Grafana variables and macros.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from tracker.errors import TrackerError

_PARAM = re.compile(r"\{(\w+):(\w+)\}")


class QueryParameterError(TrackerError):
    pass


@dataclass(frozen=True)
class Query:
    name: str
    title: str
    sql: str

    @property
    def parameters(self) -> dict[str, str]:
        """Each parameter's name and ClickHouse type, in order of first use."""
        return {name: kind for name, kind in _PARAM.findall(self.sql)}


FUNNEL = Query(
    "funnel",
    "Funnel per journey: stage entries, drop-offs, recoveries and rates",
    """SELECT level, stage, entered, dropped_off, recovered,
    round(if(first_value(entered) OVER w > 0, entered / first_value(entered) OVER w, 0), 4)
        AS rate_from_first,
    round(if(lagInFrame(entered, 1, entered) OVER w > 0,
             entered / lagInFrame(entered, 1, entered) OVER w, 0), 4) AS rate_from_previous,
    round(if(entered > 0, dropped_off / entered, 0), 4) AS dropoff_rate
FROM (
    SELECT level, any(stage) AS stage,
        sumIf(n, kind = 'stage') AS entered,
        sumIf(n, kind = 'dropoff') AS dropped_off,
        sumIf(n, kind = 'recovery') AS recovered
    FROM (
        SELECT kind, level, stage,
            toInt64(uniqExactMerge(added)) - toInt64(uniqExactMerge(withdrawn)) AS n
        FROM {db:Identifier}.journey_funnel
        WHERE journey = {journey:String} AND hour >= toStartOfHour({since:DateTime})
        GROUP BY kind, level, stage
    )
    WHERE level > 0
    GROUP BY level
)
WINDOW w AS (ORDER BY level ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
ORDER BY level""",
)

DROPOFFS = Query(
    "dropoffs",
    "Drop-offs per stage, with the pain and love signals seen before them",
    """SELECT level, stage, dropoffs, recovered, median_seconds_at_stage,
    arrayStringConcat(arrayMap(x -> concat(x.1, ' (', toString(x.2), ')'),
        arraySlice(arraySort(x -> (-x.2, x.1),
            arrayMap(s -> (s, countEqual(pains, s)), arrayDistinct(pains))), 1, 3)), ', ')
        AS top_pain,
    arrayStringConcat(arrayMap(x -> concat(x.1, ' (', toString(x.2), ')'),
        arraySlice(arraySort(x -> (-x.2, x.1),
            arrayMap(s -> (s, countEqual(loves, s)), arrayDistinct(loves))), 1, 3)), ', ')
        AS top_love
FROM (
    SELECT level, any(stage) AS stage, count() AS dropoffs, countIf(recovered) AS recovered,
        round(quantile(0.5)(seconds_at_stage), 1) AS median_seconds_at_stage,
        groupArrayArray(arrayDistinct(pain)) AS pains,
        groupArrayArray(arrayDistinct(love)) AS loves
    FROM {db:Identifier}.dropoffs
    WHERE journey = {journey:String} AND instance_start >= {since:DateTime}
    GROUP BY level
)
ORDER BY level""",
)

PAIN_BEFORE_DROPOFF = Query(
    "pain_before_dropoff",
    "Top pain signals before drop-off, per stage",
    """SELECT stage, signal, count() AS dropoffs,
    round(count() / any(total), 4) AS share_of_stage_dropoffs
FROM {db:Identifier}.dropoffs AS d
ARRAY JOIN arrayDistinct(pain) AS signal
INNER JOIN (
    SELECT stage, count() AS total FROM {db:Identifier}.dropoffs
    WHERE journey = {journey:String} AND instance_start >= {since:DateTime}
    GROUP BY stage
) AS t ON t.stage = d.stage
WHERE d.journey = {journey:String} AND d.instance_start >= {since:DateTime}
GROUP BY stage, signal
ORDER BY stage, dropoffs DESC, signal
LIMIT 5 BY stage""",
)

TIME_TO_CONVERT = Query(
    "time_to_convert",
    "Time to convert: quantiles from the journey's start to its last stage",
    """SELECT journey, count() AS conversions,
    round(quantileExact(0.5)(seconds_to_convert), 1) AS p50_seconds,
    round(quantileExact(0.9)(seconds_to_convert), 1) AS p90_seconds,
    round(quantileExact(0.99)(seconds_to_convert), 1) AS p99_seconds,
    round(avg(seconds_to_convert), 1) AS avg_seconds
FROM {db:Identifier}.conversions
WHERE journey = {journey:String} AND started_at >= {since:DateTime}
GROUP BY journey""",
)

CHANNEL_MIX = Query(
    "channel_mix",
    "Channel mix per stage: the channel of the touchpoint that entered each stage",
    """SELECT level, stage, channel, entered,
    round(entered / sum(entered) OVER (PARTITION BY level), 4) AS share
FROM (
    SELECT level, stage, channel,
        toInt64(uniqExactMerge(added)) - toInt64(uniqExactMerge(withdrawn)) AS entered
    FROM {db:Identifier}.journey_funnel
    WHERE journey = {journey:String} AND kind = 'stage'
        AND hour >= toStartOfHour({since:DateTime})
    GROUP BY level, stage, channel
)
WHERE entered > 0
ORDER BY level, entered DESC, channel""",
)

SOURCE_MIX = Query(
    "source_mix",
    "Source mix per stage: the source that sent the touchpoint that entered each stage",
    """SELECT r.level AS level, r.stage AS stage, t.source AS source, count() AS entered
FROM {db:Identifier}.journey_results AS r FINAL
INNER JOIN (SELECT message_id, source FROM {db:Identifier}.touchpoints FINAL) AS t
    ON t.message_id = r.message_id
WHERE r.journey = {journey:String} AND r.kind = 'stage' AND r.instance_start >= {since:DateTime}
GROUP BY level, stage, source
ORDER BY level, entered DESC, source""",
)

PATHS = Query(
    "paths",
    "Paths between touchpoints: the most frequent steps from one touchpoint to the next",
    """SELECT from_step, to_step, count() AS times, uniqExact(customer) AS customers,
    round(quantile(0.5)(seconds), 1) AS median_seconds
FROM (
    SELECT customer, step AS to_step, lagInFrame(step) OVER w AS from_step,
        dateDiff('millisecond', lagInFrame(timestamp) OVER w, timestamp) / 1000 AS seconds,
        row_number() OVER w AS n
    FROM (
        SELECT if(t.user_id != '', t.user_id,
                  if(m.current_user_id != '', m.current_user_id, t.anonymous_id)) AS customer,
            concat(t.channel, ':', if(t.type = 'track', t.event, t.type)) AS step,
            t.timestamp AS timestamp, t.message_id AS message_id
        FROM {db:Identifier}.touchpoints AS t FINAL
        LEFT JOIN {db:Identifier}.identity_map AS m ON m.from_id = t.anonymous_id
        WHERE t.timestamp >= {since:DateTime}
    )
    WINDOW w AS (PARTITION BY customer ORDER BY timestamp, message_id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
WHERE n > 1
GROUP BY from_step, to_step
ORDER BY times DESC, from_step, to_step
LIMIT 50""",
)

CUSTOMER_TIMELINE = Query(
    "customer_timeline",
    "One customer's cross-channel timeline: touchpoints of every linked id, and results",
    """WITH
    (SELECT groupUniqArray(user_id) FROM {db:Identifier}.identity_links FINAL
     WHERE from_id = {customer:String}) AS users,
    (SELECT groupUniqArray(from_id) FROM {db:Identifier}.identity_links FINAL
     WHERE user_id = {customer:String} OR user_id IN (
         SELECT user_id FROM {db:Identifier}.identity_links FINAL
         WHERE from_id = {customer:String})) AS members,
    arrayDistinct(arrayConcat([{customer:String}], users, members)) AS ids
SELECT at, what, detail, channel, source, id
FROM (
    SELECT timestamp AS at, 'touchpoint' AS what,
        if(type = 'track', event, type) AS detail, channel, source,
        if(user_id != '', user_id, anonymous_id) AS id, message_id AS tie
    FROM {db:Identifier}.touchpoints FINAL
    WHERE has(ids, user_id) OR has(ids, anonymous_id) OR (type = 'alias' AND has(ids, previous_id))
    UNION ALL
    SELECT at, concat('result: ', kind) AS what,
        concat(journey, if(stage != '', concat(' / ', stage), ''),
               if(notEmpty(pain), concat(' / pain: ', arrayStringConcat(pain, ',')), ''),
               if(notEmpty(love), concat(' / love: ', arrayStringConcat(love, ',')), ''))
            AS detail,
        channel, '' AS source, customer AS id, concat(instance, toString(level)) AS tie
    FROM {db:Identifier}.journey_results FINAL
    WHERE has(ids, customer)
)
ORDER BY at, what DESC, tie""",
)

QUERIES: dict[str, Query] = {
    q.name: q
    for q in (
        FUNNEL, DROPOFFS, PAIN_BEFORE_DROPOFF, TIME_TO_CONVERT, CHANNEL_MIX, SOURCE_MIX, PATHS,
        CUSTOMER_TIMELINE,
    )
}  # fmt: skip


def render(query: Query, values: Mapping[str, object]) -> str:
    """``query`` with each parameter replaced by a literal of its type."""
    missing = set(query.parameters) - set(values)
    if missing:
        raise QueryParameterError(f"{query.name}: missing parameters {sorted(missing)}")
    return _PARAM.sub(lambda m: _literal(values[m.group(1)], m.group(2)), query.sql)


def render_for_grafana(query: Query, database: str) -> str:
    """``query`` for a Grafana panel: ``$journey``/``$customer`` variables, the range's start."""
    grafana = {"Identifier": None, "DateTime": "$__fromTime"}

    def sub(m: re.Match[str]) -> str:
        name, kind = m.group(1), m.group(2)
        if kind == "Identifier":
            return database
        return grafana.get(kind) or f"'${{{name}}}'"

    return _PARAM.sub(sub, query.sql)


def _literal(value: object, kind: str) -> str:
    if kind == "Identifier":
        text = str(value)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
            raise QueryParameterError(f"not an identifier: {text!r}")
        return text
    if kind == "String":
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{text}'"
    if kind == "DateTime":
        if not isinstance(value, datetime):
            raise QueryParameterError(f"expected a datetime, got {value!r}")
        return f"toDateTime({int(value.astimezone(UTC).timestamp())}, 'UTC')"
    raise QueryParameterError(f"unsupported parameter type {kind}")
