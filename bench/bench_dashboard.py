"""Dashboard page times with 1,000,000 jobs in the table: the job list (filters, searches, deep pages) and a job.

Usage: .venv/bin/python bench/bench_dashboard.py [--rows 1000000] [--requests 200]

The database is a SQLite file of its own under var/bench-dashboard/ (or BENCH_DATABASE_URL, e.g. a
PostgreSQL database), filled once by bulk insert and kept for later runs: filling takes minutes.
Pages are rendered in-process through Django's test client with production settings (DEBUG off):
middleware, session, view, selectors, template; no network, no server. Target: p95 under 100 ms.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NAME = "dashboard"
TARGET_MS = 100
# The mix of a busy installation: most jobs done, a few of everything else.
STATUS_WEIGHTS = {"succeeded": 90, "failed": 4, "cancelled": 2, "queued": 2, "running": 1, "retrying": 1}
KINDS = ["count_primes", "steps", "noop", "fan_out", "word_count"]
USERS = 20
# One user owns half the jobs: per-user queries are slowest for the heaviest user.
HEAVY_SHARE = 0.5
BATCH = 20_000


def configure(rows: int) -> str:
    """Production settings on a database of its own; returns a description of the database."""
    db_dir = common.BASE_DIR / "var" / "bench-dashboard"
    db_dir.mkdir(parents=True, exist_ok=True)
    url = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{db_dir / f'jobs-{rows}.sqlite3'}"
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": url,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "bench-only-not-secret",
        "DJANGO_ALLOWED_HOSTS": "testserver",
        # The test client speaks plain HTTP.
        "DJANGO_SECURE_SSL_REDIRECT": "false",
    })
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    # DEBUG off serves static files from the manifest, as in production.
    call_command("collectstatic", verbosity=0, interactive=False)
    return "BENCH_DATABASE_URL" if "BENCH_DATABASE_URL" in os.environ else url.replace(f"{common.BASE_DIR}/", "")


def fill(rows: int) -> float:
    """Insert jobs until there are `rows`; returns the seconds it took (0 when the table was full)."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from jobs.models import Job

    User = get_user_model()
    users = [User.objects.get_or_create(username=f"user{i}")[0] for i in range(USERS)]
    User.objects.get_or_create(username="staff", defaults={"is_staff": True})
    have = Job.objects.count()
    if have >= rows:
        print(f"{have:,} jobs already in the table")
        return 0.0
    rng = random.Random(42 + have)
    statuses, weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    start = datetime.now(timezone.utc) - timedelta(days=30)
    step = timedelta(days=30) / rows
    began = time.perf_counter()
    # An index built once over the whole table costs far less than a million random inserts into it.
    def present() -> set[str]:
        with connection.cursor() as cursor:
            return set(connection.introspection.get_constraints(cursor, Job._meta.db_table))

    indexes = Job._meta.indexes
    with connection.schema_editor() as editor:
        for index in indexes:
            if index.name in present():
                editor.remove_index(Job, index)
    try:
        for offset in range(have, rows, BATCH):
            batch = []
            for i in range(offset, min(rows, offset + BATCH)):
                created = start + step * i
                status = rng.choices(statuses, weights)[0]
                finished = status in ("succeeded", "failed", "cancelled")
                batch.append(Job(
                    id=uuid.UUID(int=rng.getrandbits(128), version=4),
                    kind=rng.choice(KINDS),
                    params={"limit": rng.randint(2, 10_000)},
                    status=status,
                    owner=users[0] if rng.random() < HEAVY_SHARE else rng.choice(users[1:]),
                    attempts=1 if status != "queued" else 0,
                    progress_done=10 if finished else 3,
                    progress_total=10,
                    created_at=created,
                    run_at=created,
                    published_at=created,
                    started_at=created + timedelta(seconds=1) if status != "queued" else None,
                    finished_at=created + timedelta(seconds=3) if finished else None,
                    error="ValueError: bad input" if status == "failed" else "",
                ))
            with transaction.atomic():
                Job.objects.bulk_create(batch, batch_size=2000)
            done = min(rows, offset + BATCH)
            if done % 100_000 == 0 or done == rows:
                print(f"  inserted {done:,} rows ({time.perf_counter() - began:.0f} s)", flush=True)
    finally:
        with connection.schema_editor() as editor:
            for index in indexes:
                if index.name not in present():
                    editor.add_index(Job, index)
    seconds = time.perf_counter() - began
    print(f"  indexes rebuilt; {seconds:.0f} s in all", flush=True)
    return seconds


def analyze() -> None:
    """PostgreSQL: the table statistics and visibility map autovacuum keeps on a real server (a bulk fill, or a
    server with autovacuum off, leaves none, and the planner then guesses). SQLite is measured without statistics,
    as an installation has them (it runs no ANALYZE by itself)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE jobs_job")


def calibration_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop: how fast this machine is right now, to compare runs."""
    best = float("inf")
    for _ in range(20):
        c0 = time.process_time()
        sum(i * i for i in range(200_000))
        best = min(best, (time.process_time() - c0) * 1000)
    return best


def measure(client, url: str, requests: int, headers: dict | None = None) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds per request. On a shared machine the CPU time is the steadier
    figure: wall time also counts the time other processes held the cores."""
    headers = headers or {}
    for _ in range(5):  # warm caches: templates, statements, pages of the database file
        response = client.get(url, **headers)
        assert response.status_code == 200, (url, response.status_code)
    wall, cpu = [], []
    for _ in range(requests):
        t0, c0 = time.perf_counter(), time.process_time()
        client.get(url, **headers)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def main() -> None:
    quick = common.quick()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000 if quick else 1_000_000)
    parser.add_argument("--requests", type=int, default=20 if quick else 200)
    args = parser.parse_args()

    database = configure(args.rows)
    fill_seconds = fill(args.rows)
    analyze()

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from jobs import selectors
    from jobs.models import Job

    User = get_user_model()
    heavy, light, staff = (User.objects.get(username=name) for name in ("user0", "user7", "staff"))
    total = Job.objects.count()
    heavy_jobs = Job.objects.filter(owner=heavy).count()
    middle = Job.objects.filter(owner=heavy).order_by("-created_at")[heavy_jobs // 2]
    prefix = Job.objects.filter(owner=heavy, status="succeeded").order_by("-created_at")[1000].id.hex[:5]

    base = reverse("jobs:list")
    pages = [
        ("list, first page", base),
        ("list, status=failed", f"{base}?status=failed"),
        ("list, status=running", f"{base}?status=running"),
        ("list, kind=noop", f"{base}?kind=noop"),
        ("list, status=retrying & kind=fan_out", f"{base}?status=retrying&kind=fan_out"),
        ("list, half-way down (keyset)", f"{base}?older={selectors.job_cursor(middle)}"),
        ("list, search by id prefix", f"{base}?q={prefix}"),
        # Searches by parameter and error text read SEARCH_SCAN_ROWS jobs at most per page; those without a match
        # read all of them, the slowest case.
        ("list, search parameter key=value", f"{base}?param=limit%3D5000"),
        ("list, search parameter text, no match", f"{base}?param=no-such-text"),
        ("list, search error text", f"{base}?error=bad+input"),
        ("list, search error text, no match", f"{base}?error=no+such+error"),
        ("list, search error & status=failed, no match", f"{base}?status=failed&error=timeout"),
        ("list, live poll (htmx part)", base),
        ("job detail", None),
    ]
    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "jobs-panel"}
    calibration = calibration_ms()
    print(f"\n{total:,} jobs; {connection.vendor}; the heavy user owns {heavy_jobs:,}; {args.requests} requests "
          f"per page; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; calibration loop "
          f"{calibration:.1f} ms CPU\n")
    print("| page | user | wall p50 ms | wall p95 ms | CPU p50 ms | CPU p95 ms |\n|---|---|---:|---:|---:|---:|")
    results = []
    for who, user in (("staff (all jobs)", staff), ("heaviest user", heavy), ("light user", light)):
        client = Client()
        client.force_login(user)
        for name, url in pages:
            if url is None:
                job = Job.objects.visible_to(user).filter(status="succeeded").order_by("-created_at")[100]
                url = reverse("jobs:detail", args=[job.id])
            wall, cpu = measure(client, url, args.requests, htmx if "htmx" in name else None)
            row = {"page": name, "user": who, "wall_p50_ms": round(common.median(wall), 1),
                   "wall_p95_ms": round(common.percentile(wall, 95), 1), "cpu_p50_ms": round(common.median(cpu), 1),
                   "cpu_p95_ms": round(common.percentile(cpu, 95), 1)}
            results.append(row)
            print(f"| {name} | {who} | {row['wall_p50_ms']} | {row['wall_p95_ms']} | {row['cpu_p50_ms']} | "
                  f"{row['cpu_p95_ms']} |", flush=True)

    worst_wall = max(results, key=lambda r: r["wall_p95_ms"])
    worst_cpu = max(results, key=lambda r: r["cpu_p95_ms"])
    print(f"\nworst p95: {worst_wall['wall_p95_ms']} ms wall ({worst_wall['page']}, {worst_wall['user']}), "
          f"{worst_cpu['cpu_p95_ms']} ms CPU; load average {os.getloadavg()[0]:.1f} at the end")
    engine = connection.vendor
    # One result per engine: dashboard (SQLite, the default) and dashboard_postgresql (BENCH_DATABASE_URL).
    common.write_result(NAME if engine == "sqlite" else f"{NAME}_{engine}", {
        "title": f"Dashboard pages with {total:,} jobs",
        "command": common.command_line(),
        "setup": {
            "machine": common.machine(),
            "database": f"{engine}: {database}",
            "jobs": f"{total:,}, the heaviest of {USERS} users owning {heavy_jobs:,}",
            "requests": f"{args.requests} per page and user, after 5 warm-up requests, in-process (test client)",
            "settings": "production (DEBUG off, manifest static files)",
            "calibration_loop_cpu_ms": round(calibration, 1),
            "search_scan_rows": selectors.SEARCH_SCAN_ROWS,
            "fill_seconds": round(fill_seconds),
        },
        "summary": [
            {"metric": f"Worst page p95, wall clock, {engine}", "value": f"{worst_wall['wall_p95_ms']} ms",
             "baseline": "", "ratio": None, "target": f"< {TARGET_MS} ms",
             "ok": worst_wall["wall_p95_ms"] < TARGET_MS},
            {"metric": f"Worst page p95, CPU time, {engine}", "value": f"{worst_cpu['cpu_p95_ms']} ms",
             "baseline": "", "ratio": None, "target": f"< {TARGET_MS} ms",
             "ok": worst_cpu["cpu_p95_ms"] < TARGET_MS},
        ],
        "results": results,
        "charts": [],
    })


if __name__ == "__main__":
    main()
