"""Dashboard page times with 1,000,000 jobs in the table: the job list (filters, search, deep pages) and a job.

Usage: .venv/bin/python bench/bench_dashboard.py [--rows 1000000] [--requests 200]

The database is its own SQLite file under var/bench-dashboard/ (or BENCH_DATABASE_URL, e.g. PostgreSQL),
filled once by bulk insert and reused by later runs. Pages are rendered in-process through
Django's test client: middleware, session, view, selectors, template; no network or server.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
BENCH_DB = BASE_DIR / "var" / "bench-dashboard" / "jobs.sqlite3"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{BENCH_DB}")

# The mix of a busy installation: most jobs done, a few of everything else.
STATUS_WEIGHTS = {"succeeded": 90, "failed": 4, "cancelled": 2, "queued": 2, "running": 1, "retrying": 1}
KINDS = ["count_primes", "steps", "noop", "fan_out", "word_count"]
USERS = 20
# One user owns half the jobs: per-user queries are slowest for the heaviest user.
HEAVY_SHARE = 0.5
BATCH = 20_000


def setup_django():
    import django

    BENCH_DB.parent.mkdir(parents=True, exist_ok=True)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def fill(rows: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from jobs.models import Job

    User = get_user_model()
    users = [User.objects.get_or_create(username=f"user{i}")[0] for i in range(USERS)]
    User.objects.get_or_create(username="staff", defaults={"is_staff": True})
    have = Job.objects.count()
    if have >= rows:
        print(f"{have:,} jobs already in the table")
        return
    rng = random.Random(42)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    start = datetime.now(timezone.utc) - timedelta(days=30)
    step = timedelta(days=30) / rows
    began = time.perf_counter()
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


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


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


def calibration_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop: how fast this machine is right now, to compare runs."""
    best = float("inf")
    for _ in range(20):
        c0 = time.process_time()
        sum(i * i for i in range(200_000))
        best = min(best, (time.process_time() - c0) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    setup_django()
    fill(args.rows)

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from jobs import selectors
    from jobs.models import Job

    User = get_user_model()
    heavy, light, staff = User.objects.get(username="user0"), User.objects.get(username="user7"), \
        User.objects.get(username="staff")
    total = Job.objects.count()
    heavy_jobs = Job.objects.filter(owner=heavy).count()
    middle = Job.objects.filter(owner=heavy).order_by("-created_at")[heavy_jobs // 2]
    some_job = Job.objects.filter(owner=heavy, status="succeeded").order_by("-created_at")[1000]
    prefix = some_job.id.hex[:5]

    base = reverse("jobs:list")
    pages = [
        ("list, first page", base),
        ("list, status=failed", f"{base}?status=failed"),
        ("list, status=running", f"{base}?status=running"),
        ("list, kind=noop", f"{base}?kind=noop"),
        ("list, status=retrying & kind=fan_out", f"{base}?status=retrying&kind=fan_out"),
        ("list, half-way down (keyset)", f"{base}?older={selectors.job_cursor(middle)}"),
        ("list, search id prefix", f"{base}?q={prefix}"),
        ("live panel poll (htmx)", base),
        ("job detail", None),
    ]
    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "jobs-panel"}
    print(f"\n{total:,} jobs; {connection.vendor}; the heavy user owns {heavy_jobs:,}; "
          f"{args.requests} requests per page; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"calibration loop {calibration_ms():.1f} ms CPU\n")
    print("| page | user | wall p50 ms | wall p95 ms | CPU p50 ms | CPU p95 ms |\n|---|---|---:|---:|---:|---:|")
    worst_wall = worst_cpu = 0.0
    for who, user in (("staff (all jobs)", staff), ("heaviest user", heavy), ("light user", light)):
        client = Client()
        client.force_login(user)
        for name, url in pages:
            if url is None:
                job = Job.objects.visible_to(user).filter(status="succeeded").order_by("-created_at")[100]
                url = reverse("jobs:detail", args=[job.id])
            wall, cpu = measure(client, url, args.requests, htmx if "htmx" in name else None)
            worst_wall, worst_cpu = max(worst_wall, percentile(wall, 95)), max(worst_cpu, percentile(cpu, 95))
            print(f"| {name} | {who} | {statistics.median(wall):.1f} | {percentile(wall, 95):.1f} | "
                  f"{statistics.median(cpu):.1f} | {percentile(cpu, 95):.1f} |", flush=True)
    print(f"\nworst p95: {worst_wall:.1f} ms wall, {worst_cpu:.1f} ms CPU; "
          f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
