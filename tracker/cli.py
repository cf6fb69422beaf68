"""The ``tracker`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from tracker.errors import BrokerError, TrackerError
from tracker.settings import Settings

log = logging.getLogger("tracker")


def _bootstrap(settings: Settings) -> str:
    """A named cluster, else the embedded broker's address (``tracker kafka`` / ``tracker up``)."""
    return settings.kafka_bootstrap or f"127.0.0.1:{settings.kafka_port}"


def cmd_kafka(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.kafka.broker import EmbeddedKafka

    data_dir = args.data_dir or settings.data_dir / "kafka"
    port = settings.kafka_port if args.port is None else args.port
    kafka = EmbeddedKafka(
        data_dir, port=port, kafka_home=settings.kafka_home, heap=settings.kafka_heap,
        partitions=settings.topic_partitions,
    )  # fmt: skip

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a SIGINT ignored by the parent shell, or a SIGTERM from a supervisor,
    # must still stop the broker instead of leaving the JVM behind.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    kafka.start()
    print(f"Kafka {kafka.bootstrap} ready in {kafka.start_seconds:.1f}s; data in {data_dir}")
    print("Ctrl-C stops it.", flush=True)
    try:
        return kafka.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        kafka.stop()


def cmd_collector(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.collector.server import event_loop_factory, serve

    port = settings.collector_port if args.port is None else args.port
    with asyncio.Runner(loop_factory=event_loop_factory(settings)) as runner:
        runner.run(serve(settings, _bootstrap(settings), port=port, ready_file=args.ready_file))
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.worker import run

    port = settings.worker_port if args.port is None else args.port
    run(settings, _bootstrap(settings), port=port, ready_file=args.ready_file)
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.stack import Stack, describe

    stack = Stack(settings)
    try:
        stack.start(collector_port=settings.collector_port, worker_port=settings.worker_port)
        print(describe(stack), flush=True)
        stack.wait()
    finally:
        print("Stopping...", flush=True)
        stack.stop()
    return 0


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    import re

    from tracker.collector import importer
    from tracker.collector.sources import SOURCE_NAME

    if not re.fullmatch(SOURCE_NAME, args.source):
        print(f"tracker: --source {args.source!r} must match {SOURCE_NAME}", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"tracker: {args.file} is not a readable file", file=sys.stderr)
        return 2
    fmt = importer.file_format(args.file, args.format)
    rejects = args.rejects.open("w", encoding="utf-8") if args.rejects else None
    try:
        result = asyncio.run(
            importer.import_file(
                settings, _bootstrap(settings), args.file, source=args.source, fmt=fmt,
                channel=args.channel, rejects_out=rejects,
            )
        )  # fmt: skip
    finally:
        if rejects is not None:
            rejects.close()
    print(importer.summary(result, args.file))
    if args.rejects and result.rejected:
        print(f"rejected rows written to {args.rejects}")
    return importer.EXIT_REJECTED if result.rejected else 0


def cmd_query(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.querying import render, run_query

    result = run_query(settings, args.sql)
    print(render(result, args.format))
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    """``tracker funnel|dropoffs|journey``: a named analyst query (tracker/warehouse/queries.py)."""
    from datetime import UTC, datetime, timedelta

    from tracker.core.journeys.definition import parse_duration_ms
    from tracker.querying import render, run_query
    from tracker.warehouse import queries

    since = datetime(1970, 1, 1, tzinfo=UTC)
    if getattr(args, "since", None):
        try:
            since = datetime.now(UTC) - timedelta(milliseconds=parse_duration_ms(args.since))
        except ValueError as exc:
            raise TrackerError(f"--since: {exc}") from None
    values = {
        "db": settings.clickhouse_database,
        "since": since,
        "journey": getattr(args, "journey", ""),
        "customer": getattr(args, "customer", ""),
    }
    sql = queries.render(queries.QUERIES[args.query], values)
    print(render(run_query(settings, sql), args.format))
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from tracker.bench import registry

    if args.bench == "all":
        path = args.json or settings.data_dir / "bench" / f"bench-{int(time.time())}.json"
        rows, failed = registry.run_all(settings, path)
        print(registry.table(rows))
        for failure in failed:
            print(f"failed: {failure}")
        print(f"written to {path}")
        return 1 if failed else 0
    if args.bench == "e2e":
        from tracker.bench import e2e

        result = e2e.run(settings, loads=args.loads, seconds=args.seconds)
        rows = registry.e2e_rows(result)
    elif args.bench == "restart":
        from tracker.bench import restart

        runs = [
            restart.run(settings, customers=n, timeout=args.timeout, baseline=args.baseline)
            for n in args.customers
        ]
        result = {"runs": runs}
        rows = registry.restart_rows(result)
    elif args.bench == "history":
        from tracker.bench import history

        result = history.run(settings, sizes=tuple(args.touchpoints))
        rows = registry.history_rows(result)
    elif args.bench == "identity":
        from tracker.bench import identity

        result = identity.run(settings, links=args.links)
        rows = registry.identity_rows(result)
    elif args.bench == "collector":
        from tracker.bench import collector

        result = collector.run(
            settings, seconds=args.seconds, rate=args.rate, batch=args.batch,
            connections=args.connections,
        )  # fmt: skip
        rows = registry.collector_rows(result)
    else:
        from tracker.bench import worker

        result = worker.run(
            settings, events=args.events, customers=args.customers,
            per_request=args.per_request, model_events=args.model_events,
        )  # fmt: skip
        rows = registry.worker_rows(result)
    print(registry.table(rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"written to {args.json}")
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.core.journeys.definition import load
    from tracker.simulate.run import simulate

    journeys = load(args.journeys or settings.journeys_file)
    result = asyncio.run(
        simulate(
            args.url, args.write_key, journeys, scenario=args.scenario, rate=args.rate,
            duration=args.duration, seed=args.seed, relay=args.relay, truth_file=args.truth,
        )
    )  # fmt: skip
    stats, truth = result.stats, result.truth
    print(
        f"sent {stats.accepted} messages ({truth.unique_messages} unique ids) for "
        f"{result.customers} customers in {result.seconds:.1f}s: "
        f"{stats.accepted / result.seconds:,.0f} messages/s, {stats.requests} requests, "
        f"{stats.retries} retries ({stats.throttled} answered 429/503)"
    )
    if args.truth:
        print(f"ground truth written to {args.truth}")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.demo.run import run_demo

    outcome = run_demo(
        settings, duration=args.duration, rate=args.rate, seed=args.seed, scenario=args.scenario
    )
    return 0 if outcome.matched else 1


def cmd_defaults(settings: Settings, args: argparse.Namespace) -> int:
    from tracker import defaults

    for path in defaults.write(args.dir):
        print(path)
    return 0


def cmd_docs(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.docs import PAGES

    sys.stdout.write(PAGES[args.page]())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracker", description="Touchpoint Tracker: real-time customer journeys."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run the whole pipeline on the embedded defaults")
    p.set_defaults(func=cmd_up, process="up")

    p = sub.add_parser("kafka", help="run the embedded development Kafka broker")
    p.add_argument("--port", type=int, help="listener port (0 = any free port)")
    p.add_argument("--data-dir", type=Path, help="log dirs (default <data_dir>/kafka)")
    p.set_defaults(func=cmd_kafka, process="kafka")

    for name, func, helptext in (
        ("collector", cmd_collector, "run the HTTP collector"),
        ("worker", cmd_worker, "run a stream worker"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--port", type=int, help="HTTP port (0 = any free port)")
        p.add_argument("--ready-file", type=Path, help="write {url} here once listening")
        p.set_defaults(func=func, process=name)

    p = sub.add_parser("bench", help="benchmarks (figures beside a same-run baseline)")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("worker", help="one worker vs a bare aiokafka consumer on one topic")
    b.add_argument("--events", type=int, default=200_000)
    b.add_argument("--customers", type=int, default=50_000)
    b.add_argument("--per-request", type=int, default=5, help="events per browser request")
    b.add_argument(
        "--model-events", type=int, default=100_000, help="events of each cost model run (0: none)"
    )
    b.add_argument("--json", type=Path, help="also write the figures here")
    b.set_defaults(func=cmd_bench, process="bench")
    b = bench.add_parser("collector", help="one collector under HTTP load vs a bare producer")
    b.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    b.add_argument("--rate", type=int, default=5000, help="offered events/s of the fixed phase")
    b.add_argument("--batch", type=int, default=20, help="events per request")
    b.add_argument("--connections", type=int, default=32, help="keep-alive connections (max)")
    b.add_argument("--json", type=Path, help="also write the figures here")
    b.set_defaults(func=cmd_bench, process="bench")

    p = sub.add_parser(
        "import", help="load a CSV or NDJSON export of offline touchpoints",
        epilog="exit codes: 0 every row accepted, 3 some rows rejected (the rest written), "
        "1 the import failed (importing the file again is safe)",
    )  # fmt: skip
    p.add_argument("file", type=Path)
    p.add_argument("--source", required=True, help="source label recorded on every touchpoint")
    p.add_argument("--format", choices=("csv", "ndjson"), help="default: from the file name")
    p.add_argument("--channel", default="offline", help="channel of rows that name none")
    p.add_argument("--rejects", type=Path, help="write rejected rows here (NDJSON)")
    p.set_defaults(func=cmd_import, process="import")

    b = bench.add_parser("e2e", help="accepted->queryable and deadline->drop-off latency")
    b.add_argument("--loads", type=int, nargs="+", default=[1000, 5000],
                   help="offered loads, events/s, one after the other")  # fmt: skip
    b.add_argument("--seconds", type=float, default=15.0, help="seconds of traffic per load")
    b.add_argument("--json", type=Path, help="also write the figures here")
    b.set_defaults(func=cmd_bench, process="bench")
    b = bench.add_parser("restart", help="worker start -> first new event written, vs in memory")
    b.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000],
                   help="customers of state, one run each")  # fmt: skip
    b.add_argument("--timeout", type=float, default=900.0,
                   help="seconds a worker start may take (a first one reads all)")  # fmt: skip
    b.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="leave out the start with tables in memory (slow at 1M)")  # fmt: skip
    b.add_argument("--json", type=Path, help="also write the figures here")
    b.set_defaults(func=cmd_bench, process="bench")
    b = bench.add_parser("identity", help="identity links/s of the one identity agent")
    b.add_argument("--links", type=int, default=100_000, help="links per round (new, repeat)")
    b.add_argument("--json", type=Path, help="also write the figures here")
    b.set_defaults(func=cmd_bench, process="bench")
    b = bench.add_parser("history", help="time per added touchpoint vs a customer's history size")
    b.add_argument("--touchpoints", type=int, nargs="+", default=[10, 1_000, 10_000, 100_000],
                   help="history sizes (spread over a year), one run each")  # fmt: skip
    b.add_argument("--json", type=Path, help="also write the figures here")
    b.set_defaults(func=cmd_bench, process="bench")
    b = bench.add_parser("all", help="every benchmark, one table, JSON with a timestamp")
    b.add_argument("--json", type=Path, help="where to write (default <data_dir>/bench/)")
    b.set_defaults(func=cmd_bench, process="bench")

    from tracker.simulate.scenarios import scenario_names

    p = sub.add_parser("simulate", help="send realistic customer traffic to a collector")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the collector's base URL")
    p.add_argument("--write-key", default="", help="the source's write key (HTTP Basic user)")
    p.add_argument("--rate", type=float, default=50.0, help="touchpoints per second, about")
    p.add_argument("--duration", type=float, default=30.0, help="seconds during which customers "
                   "arrive; the run ends when the last one has finished")  # fmt: skip
    p.add_argument("--scenario", choices=scenario_names(), default="mix")
    p.add_argument("--seed", type=int, default=1, help="the same seed sends the same customers")
    p.add_argument("--journeys", type=Path, help="journeys file (default: TRACKER_JOURNEYS_FILE)")
    p.add_argument("--truth", type=Path, help="write the ground truth here as JSON")
    p.add_argument(
        "--relay",
        action="store_true",
        help="send as a server-side relay: everything due together, 100 per batch",
    )
    p.set_defaults(func=cmd_simulate, process="simulate")

    p = sub.add_parser("demo", help="run the pipeline with simulated customers and report")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arriving customers")
    p.add_argument("--rate", type=float, default=40.0, help="touchpoints per second, about")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scenario", choices=scenario_names(), default="mix")
    p.set_defaults(func=cmd_demo, process="demo")

    p = sub.add_parser("query", help="run a read-only SQL query on the warehouse")
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=cmd_query, process="query")

    p = sub.add_parser(
        "defaults", help="write the shipped journeys, dashboards, alert rules to a directory"
    )
    p.add_argument("dir", type=Path, help="where to write (files there are overwritten)")
    p.set_defaults(func=cmd_defaults, process="defaults")

    p = sub.add_parser("docs", help="print a generated reference page (docs/settings.md, ...)")
    p.add_argument("page", choices=("settings", "metrics"))
    p.set_defaults(func=cmd_docs, process="docs")

    since_help = "only journeys started this long ago or later (e.g. 24h, 7d; default: all)"
    p = sub.add_parser("funnel", help="a journey's funnel: entries, drop-offs, rates per stage")
    p.add_argument("--journey", required=True)
    p.add_argument("--since", help=since_help)
    p.set_defaults(query="funnel")
    p = sub.add_parser("dropoffs", help="a journey's drop-offs per stage, with top pain signals")
    p.add_argument("--journey", required=True)
    p.add_argument("--since", help=since_help)
    p.set_defaults(query="dropoffs")
    p = sub.add_parser("journey", help="one customer's cross-channel timeline and results")
    p.add_argument("customer", metavar="CUSTOMER_ID", help="a userId (or an anonymousId)")
    p.set_defaults(query="customer_timeline")
    for name in ("funnel", "dropoffs", "journey"):
        p = sub.choices[name]
        p.add_argument("--format", choices=("table", "json", "csv"), default="table")
        p.set_defaults(func=cmd_report, process=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tracker import logs

    try:
        settings = Settings()
    except ValueError as exc:
        print(f"tracker: invalid settings: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, process=args.process)
    try:
        return int(args.func(settings, args))
    except BrokerError as exc:
        print(f"tracker: {exc}\n--- broker log ---\n{exc.log_tail}", file=sys.stderr)
        return 1
    except TrackerError as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
