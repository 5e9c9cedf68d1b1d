"""Aggregation cost: the first full run over 1,000,000 finished jobs, a run after 1,000 new ones, a run with nothing new.

Each database (SQLite file, PostgreSQL database) is created for the run, filled with finished
jobs spread over the last 30 days (five kinds, mixed outcomes, log-normal wait and run times),
then aggregated with jobs.aggregation.aggregate_jobs() as the beat task calls it. The
incremental and empty runs are repeated; medians are reported. Targets: incremental (1,000
new) under 100 ms, empty under 20 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from datetime import timedelta, timezone as dt_timezone
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NAME = "aggregation"
KINDS = ("count_primes", "steps", "noop", "fan_out", "word_count")
INCREMENTAL_TARGET_MS = 100
EMPTY_TARGET_MS = 20


def make_jobs(n: int, *, rng: random.Random, finished_between, Job) -> list[dict]:
    """n finished jobs (the fields that vary) whose finish times are spread evenly between the two instants."""
    start, end = finished_between
    step = (end - start) / max(1, n)
    S = Job.Status
    jobs = []
    for i in range(n):
        finished = start + step * i
        status = rng.choice((S.SUCCEEDED,) * 8 + (S.FAILED, S.CANCELLED))
        started = finished - timedelta(seconds=rng.lognormvariate(-1, 1.5))
        created = started - timedelta(seconds=rng.lognormvariate(-2, 2))
        if status == S.CANCELLED and i % 2:
            started = None  # cancelled while queued: no wait or run time
        jobs.append({"id": uuid.UUID(int=rng.getrandbits(128), version=4), "kind": rng.choice(KINDS),
                     "status": str(status), "created_at": created, "run_at": created, "published_at": created,
                     "started_at": started, "finished_at": finished, "attempts": 1, "updated_at": finished})
    return jobs


def insert_jobs(jobs: list[dict], *, Job, connection) -> None:
    """Write jobs without the ORM's per-field preparation, which would make filling a million rows take an hour.

    The fields the generator leaves at their defaults are prepared once, the others by hand.
    """
    fields = Job._meta.concrete_fields
    template = Job()
    varying = set(jobs[0])
    constant = {f.name: f.get_db_prep_save(f.pre_save(template, add=True), connection) for f in fields
                if f.name not in varying}
    postgres = connection.vendor == "postgresql"

    def db_value(value):
        if postgres or value is None:
            return value
        if isinstance(value, uuid.UUID):
            return value.hex
        if hasattr(value, "tzinfo"):
            return value.astimezone(dt_timezone.utc).replace(tzinfo=None).isoformat(" ")
        return value

    rows = [[db_value(job[f.name]) if f.name in varying else constant[f.name] for f in fields] for job in jobs]
    columns = ", ".join(f.column for f in fields)
    with connection.cursor() as cursor:
        if postgres:
            with cursor.cursor.copy(f"COPY {Job._meta.db_table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(f"INSERT INTO {Job._meta.db_table} ({columns}) "
                               f"VALUES ({', '.join(['%s'] * len(fields))})", rows)


def child(args) -> None:
    """Runs with the database's environment: fills it, then times the aggregation runs."""
    import django

    django.setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from jobs.aggregation import aggregate_jobs
    from jobs.models import Job, JobMinuteRollup, RollupWatermark

    rng = random.Random(42)
    now = timezone.now()
    started = time.perf_counter()
    batch = 10_000
    span = (now - timedelta(days=30), now - timedelta(minutes=5))
    step = (span[1] - span[0]) / args.jobs
    for offset in range(0, args.jobs, batch):
        n = min(batch, args.jobs - offset)
        window = (span[0] + step * offset, span[0] + step * (offset + n))
        with transaction.atomic():
            insert_jobs(make_jobs(n, rng=rng, finished_between=window, Job=Job), Job=Job, connection=connection)
    fill_seconds = time.perf_counter() - started
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE jobs_job")
    else:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(f"  {args.engine}: {args.jobs:,} jobs written in {fill_seconds:.0f} s", flush=True)

    started = time.perf_counter()
    full = aggregate_jobs()
    full_seconds = time.perf_counter() - started
    assert full.jobs == args.jobs, full
    print(f"  {args.engine}: first full run {full_seconds:.1f} s ({full.jobs:,} jobs, {full.batches} batches)",
          flush=True)

    incremental, empty, incremental_cpu = [], [], []
    load_before = os.getloadavg()[0]
    for _ in range(args.repeat):
        watermark = RollupWatermark.objects.get()
        after = watermark.finished_at + timedelta(milliseconds=1)
        with transaction.atomic():
            insert_jobs(make_jobs(args.new, rng=rng, finished_between=(after, after + timedelta(seconds=1)), Job=Job),
                        Job=Job, connection=connection)
        started, cpu = time.perf_counter(), time.process_time()
        result = aggregate_jobs()
        incremental.append((time.perf_counter() - started) * 1000)
        incremental_cpu.append((time.process_time() - cpu) * 1000)
        assert result.jobs == args.new, result
        started = time.perf_counter()
        result = aggregate_jobs()
        empty.append((time.perf_counter() - started) * 1000)
        assert result.jobs == 0, result
    print(f"  {args.engine}: incremental ({args.new:,} new) median {common.median(incremental):.1f} ms "
          f"({common.median(incremental_cpu):.1f} ms of it this process's CPU), "
          f"empty median {common.median(empty):.2f} ms; load average {load_before:.1f}", flush=True)

    plan = explain_new_jobs(connection, RollupWatermark.objects.get(), Job)
    Path(args.out).write_text(json.dumps({
        "fill_seconds": fill_seconds,
        "full_seconds": full_seconds,
        "full_batches": full.batches,
        "incremental_ms": incremental,
        "incremental_client_cpu_ms": incremental_cpu,
        "empty_ms": empty,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "minute_rollups": JobMinuteRollup.objects.count(),
        "new_jobs_query_plan": plan,
    }))


def explain_new_jobs(connection, watermark, Job) -> str:
    """The plan of the query that reads the new jobs: it must be a range scan of the finished_at index."""
    from django.utils import timezone

    from jobs.aggregation import _new_jobs

    qs = _new_jobs(watermark, timezone.now()).values_list("id", "kind", "status", "created_at", "run_at",
                                                          "started_at", "finished_at")[:20_000]
    return qs.explain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="sqlite", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=20_000 if common.quick() else 1_000_000,
                        help="finished jobs in the database before the first run")
    parser.add_argument("--new", type=int, default=1000, help="new finished jobs before each incremental run")
    parser.add_argument("--repeat", type=int, default=3 if common.quick() else 7,
                        help="incremental and empty runs, each")
    args = parser.parse_args()
    if args.child:
        return child(args)

    engines, skipped = common.engines_to_measure()
    results, setups = {}, {}
    for engine in engines:
        db = common.Database(engine, NAME)
        try:
            # Aggregation touches no Redis; the settings only need a URL.
            env = common.platform_env(database_url=db.url, redis_url="redis://127.0.0.1:1/0")
            db.migrate(env)
            setups[engine] = {"database": db.version()}
            print(f"{engine}: {args.jobs:,} jobs, then {args.repeat} x ({args.new:,} new, nothing new)", flush=True)
            results[engine] = common.run_child(
                "bench.bench_aggregation", env=env, timeout=7200,
                args=["--engine", engine, "--jobs", str(args.jobs), "--new", str(args.new), "--repeat",
                      str(args.repeat)],
            )
        finally:
            db.drop()

    summary = []
    for engine, r in results.items():
        inc, empty = common.median(r["incremental_ms"]), common.median(r["empty_ms"])
        summary += [
            {"metric": f"First full aggregation of {args.jobs:,} jobs, {engine}", "value": f"{r['full_seconds']:.1f} s",
             "target": "none (measured)", "ok": True},
            {"metric": f"Incremental run, {args.new:,} new jobs, {engine}", "value": f"{inc:.1f} ms",
             "target": f"< {INCREMENTAL_TARGET_MS} ms", "ok": inc < INCREMENTAL_TARGET_MS},
            {"metric": f"Run with nothing new, {engine}", "value": f"{empty:.2f} ms",
             "target": f"< {EMPTY_TARGET_MS} ms", "ok": empty < EMPTY_TARGET_MS},
        ]
    for row in summary:
        print(f"{row['metric']}: {row['value']} (target {row['target']}){'' if row['ok'] else '  MISSED'}")
    common.write_result(NAME, {
        "title": "Aggregation: full, incremental and empty runs",
        "command": common.command_line(),
        "setup": {
            "machine": common.machine(),
            "jobs": args.jobs,
            "new_jobs_per_incremental_run": args.new,
            "runs_each": args.repeat,
            "data": "finished jobs evenly spread over 30 days, five kinds, 80% succeeded / 10% failed / 10% "
                    "cancelled, log-normal wait and run times",
            "databases": setups,
            "skipped": skipped,
        },
        "results": results,
        "summary": summary,
        "charts": [],
    })


if __name__ == "__main__":
    main()
