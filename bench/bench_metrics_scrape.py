"""/metrics scrape latency: GET /metrics with a staff bearer token (what Prometheus sends) under gunicorn, with
the workers' heartbeats and metrics files present, against GET /healthz (one database and one broker round
trip) and a constant view on the same server; SQLite and PostgreSQL.

The server is the Procfile's web line (gunicorn, 2 sync workers, access log) with the bench URLconf; the
Procfile's worker and housekeeping lines run beside it. Jobs of every queued kind run first (one of them
retried), so that a scrape sums real files (the gunicorn processes', the pool processes') with series for each
kind, and reads live heartbeats. Then one client sends one request at a time, the three endpoints taking
turns, and times each on its side (connection included: sync workers close it after each response).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NAME = "metrics_scrape"
ENDPOINTS = {"metrics": "/metrics", "healthz": "/healthz", "constant": "/bench/constant"}
TARGET_P95_MS = 100
JOB_MIX = [
    {"kind": "noop", "params": {}},
    {"kind": "count_primes", "params": {"limit": 2000}},
    {"kind": "steps", "params": {"steps": 2, "step_seconds": 0}},
    {"kind": "fan_out", "params": {"author_id": 1, "text": "bench", "ensure_followers": 3}},
]
RETRIED = {"kind": "steps", "params": {"steps": 1, "step_seconds": 0, "fail_at_step": 1, "fail_attempts": 1}}


def staff_token(env: dict) -> str:
    """A staff user and an API token for it, in the run's database (/metrics is for staff)."""
    code = ("from django.contrib.auth import get_user_model; "
            "get_user_model().objects.create_user('bench-staff', is_staff=True)")
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=common.BASE_DIR, env=env, check=True,
                   timeout=120, capture_output=True)
    out = subprocess.run([sys.executable, "manage.py", "create_token", "bench-staff"], cwd=common.BASE_DIR, env=env,
                         check=True, timeout=120, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def samples(text: str) -> dict[str, float]:
    """{sample name: sum over its labels}."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def summarize(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": common.percentile(ms, 50), "p95_ms": common.percentile(ms, 95),
            "p99_ms": common.percentile(ms, 99), "mean_ms": sum(ms) / len(ms), "max_ms": max(ms)}


def measure(engine: str, args) -> dict:
    import httpx

    redis = common.RedisServer(NAME)
    db = common.Database(engine, NAME)
    web = worker = housekeeping = None
    try:
        env = common.platform_env(database_url=db.url, redis_url=redis.url, WORKER_CONCURRENCY="2")
        db.migrate(env)
        token = staff_token(env)
        web, base = common.start_web(env, name=f"{NAME}-{engine}")
        worker = common.start_procfile("worker", env=env, log_path=common.WORK_DIR / f"{NAME}-{engine}-worker.log")
        housekeeping = common.start_procfile("housekeeping", env=env,
                                             log_path=common.WORK_DIR / f"{NAME}-{engine}-housekeeping.log")
        common.wait_worker_ready(worker)
        common.wait_worker_ready(housekeeping)
        setup = {"database": db.version(), "redis": f"Redis {redis.version()} on loopback, no persistence"}
        headers = {"Authorization": f"Bearer {token}"}

        with httpx.Client(base_url=base, timeout=30) as http:
            submissions = [JOB_MIX[i % len(JOB_MIX)] for i in range(args.jobs - 1)] + [RETRIED]
            for body in submissions:
                response = http.post("/api/jobs", json=body, headers=headers)
                response.raise_for_status()

            def scraped() -> dict[str, float]:
                response = http.get("/metrics", headers=headers)
                response.raise_for_status()
                return samples(response.text)

            def settled():
                values = scraped()
                done = values.get("jobs_finished_total", 0) >= len(submissions)
                return values if done and values.get("jobs_workers_online", 0) >= 2 else None

            values = common.wait_until(settled, timeout=180, interval=0.5,
                                       what="every job to finish and both workers' heartbeats")

            def timed(name: str) -> float:
                started = time.perf_counter()
                response = http.get(ENDPOINTS[name], headers=headers if name == "metrics" else None)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{ENDPOINTS[name]} answered {response.status_code}: {response.text[:300]}")
                return elapsed

            names = list(ENDPOINTS)
            for _ in range(args.warmup):  # both gunicorn processes import and connect before anything is timed
                for name in names:
                    timed(name)
            times: dict[str, list[float]] = {name: [] for name in names}
            for i in range(args.scrapes):
                for name in names[i % len(names):] + names[:i % len(names)]:  # each takes every position in turn
                    times[name].append(timed(name))
            exposition = http.get("/metrics", headers=headers)
        text = exposition.text
        return {
            "setup": setup,
            "endpoints": {name: summarize(ms) for name, ms in times.items()},
            "exposition": {"bytes": len(exposition.content),
                           "samples": sum(1 for line in text.splitlines() if line and not line.startswith("#")),
                           "families": sum(1 for line in text.splitlines() if line.startswith("# TYPE")),
                           "metric_files": len([f for f in os.listdir(env["PROMETHEUS_MULTIPROC_DIR"])
                                                if f.endswith(".db")])},
            "jobs": len(submissions),
            "workers_online": values.get("jobs_workers_online"),
        }
    finally:
        common.tear_down(housekeeping, worker, web, redis=redis, db=db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=20 if common.quick() else 200,
                        help="timed requests per endpoint")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per endpoint first")
    parser.add_argument("--jobs", type=int, default=20 if common.quick() else 200, help="jobs run before the scrapes")
    args = parser.parse_args()

    engines, skipped = common.engines_to_measure()
    results = {}
    for engine in engines:
        print(f"{engine}: {args.jobs} jobs, then {args.scrapes} requests per endpoint", flush=True)
        results[engine] = r = measure(engine, args)
        for name, s in r["endpoints"].items():
            print(f"  {name:9s} p50 {s['p50_ms']:6.2f} ms  p95 {s['p95_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms",
                  flush=True)

    summary = []
    for engine, r in results.items():
        scrape, health, constant = (r["endpoints"][n] for n in ("metrics", "healthz", "constant"))
        summary.append({
            "metric": f"GET /metrics p95, {r['exposition']['samples']} samples, 2 workers' heartbeats, {engine}",
            "value": f"{scrape['p95_ms']:.1f} ms (p50 {scrape['p50_ms']:.1f} ms)",
            "baseline": f"{health['p95_ms']:.1f} ms GET /healthz (p50 {health['p50_ms']:.1f} ms); "
                        f"{constant['p95_ms']:.1f} ms constant view",
            "ratio": round(scrape["p95_ms"] / health["p95_ms"], 2),
            "target": f"p95 < {TARGET_P95_MS} ms",
            "ok": scrape["p95_ms"] < TARGET_P95_MS,
        })
    common.write_result(NAME, {
        "title": "Metrics scrape: GET /metrics vs GET /healthz, same gunicorn",
        "command": common.command_line(),
        "setup": {
            "machine": common.machine(),
            "server": "the Procfile's web line: gunicorn, 2 sync workers, access log to a file; DEBUG off",
            "workers": "the Procfile's worker (prefork, concurrency 2) and housekeeping lines, heartbeating",
            "load": f"one client, one request at a time, /metrics, /healthz and a constant view taking turns; "
                    f"{args.warmup} untimed then {args.scrapes} timed requests each; loopback",
            "before": f"{args.jobs} jobs (noop, count_primes, steps, fan_out; one retried) run to the end",
            "databases": {e: r["setup"] for e, r in results.items()},
            "skipped": skipped,
        },
        "results": results,
        "summary": summary,
        "charts": [],
    })


if __name__ == "__main__":
    main()
