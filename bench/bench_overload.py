"""Overload: producers submit through HTTP at about 5x what the workers drain, once with the gate and once without.

One worker process (the Procfile's worker line, concurrency 1) drains `steps` jobs of fixed work
at rate R; producers (hey) POST /api/jobs to gunicorn on loopback at 5R for a fixed time. A
sampler reads the queue depth and Redis memory every 0.1 s. Afterwards the worker drains for a
bounded time and the accepted jobs' wait times are read from the database. SQLite.

The floor of a refusal is measured in the same run: while the worker drains the backlog the open
queue left, the same producers at the same rate POST to a bare WSGI app answering a constant 503
(bench/constant_wsgi.py) under gunicorn with the web line's worker count.
"""
from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
import threading
import time
from datetime import datetime

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NAME = "overload"
JOB = {"kind": "steps", "params": {"steps": 1, "step_seconds": 0.02}}


def queue_depth(client) -> int:
    pipe = client.pipeline(transaction=False)
    for queue in ("default", "cpu", "io"):
        for p in range(10):
            pipe.llen(f"{queue}:{p}" if p else queue)
    return sum(pipe.execute())


def measure_drain_rate(base: str, headers: dict, redis, backlog: int) -> float:
    """R: jobs per second the worker drains, timed on a backlog between 90% and 10% of it.

    Timed while the queue is never empty, so that R is the worker's pace and not the backlog's size.
    """
    import httpx

    with httpx.Client(timeout=30) as client:
        for _ in range(backlog):
            client.post(base + "/api/jobs", json=JOB, headers=headers)

    def passed(level: float):
        depth = queue_depth(redis)
        return (time.monotonic(), depth) if depth <= level else None

    t1, d1 = common.wait_until(lambda: passed(0.9 * backlog), timeout=300, interval=0.01, what="the drain to start")
    t2, d2 = common.wait_until(lambda: passed(0.1 * backlog), timeout=300, interval=0.01, what="the backlog to drain")
    common.wait_until(lambda: queue_depth(redis) == 0, timeout=300, what="the backlog to drain")
    return max(1.0, (d1 - d2) / max(1e-3, t2 - t1))


def run(label: str, *, base: str, token: str, redis, rate: float, seconds: float, producers: int,
        while_draining=None) -> dict:
    """Producers at `rate` for `seconds` (hey: Go, light, one row per request), the depth sampled meanwhile.

    `while_draining` is called once the producers stop, while the worker drains what was accepted.
    """
    import json
    from datetime import timezone

    samples = []
    stop = threading.Event()

    def sampler():
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, queue_depth(redis), int(redis.info("memory")["used_memory"])))
            time.sleep(0.1)

    sampling = threading.Thread(target=sampler)
    started_at = datetime.now(timezone.utc).replace(tzinfo=None)
    sampling.start()
    rows = common.hey_paced(base + "/api/jobs", rate=rate, seconds=seconds, clients=producers, method="POST",
                            body=json.dumps(JOB), token=token)
    statuses = [row["status"] for row in rows]
    refused_ms = [row["seconds"] * 1000 for row in rows if row["status"] == 503]
    final_depth = queue_depth(redis)
    during_drain = while_draining() if while_draining else None
    # Let the accepted jobs run, for a bounded time, to read their waits.
    deadline = time.monotonic() + 90
    while queue_depth(redis) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    sampling.join()
    return {
        "label": label,
        "sent": len(statuses),
        "accepted": statuses.count(202),
        "refused": statuses.count(503),
        "other": len(statuses) - statuses.count(202) - statuses.count(503),
        "accepted_per_s": statuses.count(202) / seconds,
        "max_depth": max(d for _, d, _ in samples),
        "final_depth": final_depth,
        "left_after_drain_window": queue_depth(redis),
        "redis_used_memory_max_bytes": max(m for _, _, m in samples),
        "refusal_p50_ms": common.percentile(refused_ms, 50) if refused_ms else None,
        "refusal_p99_ms": common.percentile(refused_ms, 99) if refused_ms else None,
        "submitted_from": started_at,
        "samples": samples,
        "while_draining": during_drain,
    }


def floor(*, rate: float, seconds: float, producers: int, token: str) -> dict:
    """The same producers against bench/constant_wsgi.py under gunicorn: refusal times p50/p99, both sides."""
    import json
    import shlex

    port = common.free_port()
    workers = os.environ.get("WEB_CONCURRENCY", "2")
    log_path = common.WORK_DIR / f"{NAME}-floor-web.log"
    log_path.unlink(missing_ok=True)
    web = common.Process(
        [str(common.VENV_BIN / "gunicorn"), "bench.constant_wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", workers, "--access-logfile", "-", "--access-logformat", '"%(r)s" %(s)s rt_us=%(D)s'],
        env=dict(os.environ), log_path=log_path)
    try:
        common.wait_until(lambda: _answers(port), timeout=30, what="the constant app")
        log_start = len(web.log())
        rows = common.hey_paced(f"http://127.0.0.1:{port}/api/jobs", rate=rate, seconds=seconds, clients=producers,
                                method="POST", body=json.dumps(JOB), token=token)
        pattern = re.compile(r'"POST /api/jobs HTTP/[\d.]+" 503 rt_us=(\d+)$', re.M)
        served = [int(us) / 1000 for us in pattern.findall(web.log()[log_start:])]
    finally:
        web.stop()
    client = [row["seconds"] * 1000 for row in rows if row["status"] == 503]
    return {"app": "bench/constant_wsgi.py", "gunicorn": shlex.join(["--workers", workers]), "answered": len(client),
            "p50_ms": common.percentile(client, 50), "p99_ms": common.percentile(client, 99),
            "server_p50_ms": common.percentile(served, 50), "server_p99_ms": common.percentile(served, 99)}


def _answers(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def server_times_ms(web_log: str, status: int) -> list[float]:
    """How long gunicorn took to answer each POST /api/jobs with `status` (its access log's rt_us)."""
    pattern = re.compile(rf'"POST /api/jobs HTTP/[\d.]+" {status} .* rt_us=(\d+)$', re.M)
    return [int(us) / 1000 for us in pattern.findall(web_log)]


def waits(db_path: str, since: datetime) -> list[float]:
    """Seconds from submission to start of the jobs submitted since `since` (UTC) that started."""
    con = sqlite3.connect(db_path)
    try:
        rows = con.execute("SELECT created_at, started_at FROM jobs_job WHERE created_at >= ? "
                           "AND started_at IS NOT NULL", [since.isoformat(sep=" ")]).fetchall()
    finally:
        con.close()
    return [(datetime.fromisoformat(s) - datetime.fromisoformat(c)).total_seconds() for c, s in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5 if common.quick() else 20, help="producing time per run")
    parser.add_argument("--limit", type=int, default=100, help="JOBS_QUEUE_LIMIT of the gated run")
    parser.add_argument("--producers", type=int, default=8)
    args = parser.parse_args()

    import httpx  # noqa: F401
    if common.hey_path() is None:
        sys.exit("hey is not installed (Debian: apt-get install -y hey); `make bench` installs it")

    results = {}
    for label, limit in (("with the gate", args.limit), ("without the gate", 10**9)):
        redis = common.RedisServer(f"{NAME}-{limit}")
        db = common.Database("sqlite", f"{NAME}-{limit}")
        web = worker = None
        try:
            env = common.platform_env(database_url=db.url, redis_url=redis.url, JOBS_QUEUE_LIMIT=str(limit),
                                      WORKER_CONCURRENCY="1", JOBS_RETRY_AFTER_MAX="10")
            db.migrate(env)
            token = common.create_user_token(env, "bench")
            headers = {"Authorization": f"Bearer {token}"}
            web, base = common.start_web(env, name=f"{NAME}-{limit}")
            worker = common.start_procfile("worker", env=env, log_path=common.WORK_DIR / f"{NAME}-{limit}-worker.log")
            common.wait_worker_ready(worker)
            client = redis.client()
            rate = measure_drain_rate(base, headers, client, backlog=min(limit - 1, 300))
            print(f"{label}: drain rate R = {rate:.1f} jobs/s; producing at {5 * rate:.0f}/s for {args.seconds:g} s",
                  flush=True)
            log_start = len(web.log())
            # The open queue leaves a backlog that keeps the worker hashing long after its producers
            # stop: the floor is measured then, under the same load on the machine.
            measure_floor = None if limit < 10**9 else (
                lambda: floor(rate=5 * rate, seconds=args.seconds, producers=args.producers, token=token))
            result = run(label, base=base, token=token, redis=client, rate=5 * rate, seconds=args.seconds,
                         producers=args.producers, while_draining=measure_floor)
            served = server_times_ms(web.log()[log_start:], 503)
            result.update(refusal_server_p50_ms=common.percentile(served, 50) if served else None,
                          refusal_server_p99_ms=common.percentile(served, 99) if served else None)
            wait = waits(db.url.removeprefix("sqlite:///"), result.pop("submitted_from"))
            result.update(drain_rate=rate, limit=limit if limit < 10**9 else None, started=len(wait),
                          wait_p50_s=common.percentile(wait, 50) if wait else None,
                          wait_p99_s=common.percentile(wait, 99) if wait else None,
                          wait_bound_s=1.2 * limit / rate if limit < 10**9 else None)
            results[label] = result
            print(f"  accepted {result['accepted']}, refused {result['refused']}, max depth {result['max_depth']}, "
                  f"wait p99 {result['wait_p99_s']}, refusal p99 {result['refusal_p99_ms']} ms "
                  f"(server {result['refusal_server_p99_ms']} ms)", flush=True)
        finally:
            common.tear_down(worker, web, redis=redis, db=db)

    gated, open_ = results["with the gate"], results["without the gate"]
    base = open_["while_draining"]
    floor_note = "same producers, while the worker hashes"
    summary = [
        {"metric": "Max queue depth under 5R, with the gate", "value": f"{gated['max_depth']} (limit {args.limit})",
         "baseline": f"{open_['max_depth']} without the gate", "ratio": round(gated["max_depth"] / max(1, open_["max_depth"]), 3),
         "target": "limit + documented overshoot", "ok": gated["max_depth"] <= args.limit * 1.25},
        {"metric": "Wait p99 of accepted jobs, with the gate", "value": fmt(gated["wait_p99_s"], "s"),
         "baseline": f"{fmt(open_['wait_p99_s'], 's')} without the gate (jobs started within the window)",
         "ratio": round((gated["wait_p99_s"] or 0) / max(1e-9, gated["wait_bound_s"]), 3),
         "target": f"<= 1.2 x limit / R = {gated['wait_bound_s']:.1f} s", "ok": (gated["wait_p99_s"] or 1e9) <= gated["wait_bound_s"]},
        {"metric": "Refusal (503) response time p99, seen by the producers",
         "value": f"{fmt(gated['refusal_p99_ms'], 'ms')} (p50 {fmt(gated['refusal_p50_ms'], 'ms')})",
         "baseline": f"{fmt(base['p99_ms'], 'ms')}: a bare WSGI app's constant 503, {floor_note}",
         "ratio": round((gated["refusal_p99_ms"] or 0) / max(1e-9, base["p99_ms"]), 2), "target": "< 5 ms",
         "ok": (gated["refusal_p99_ms"] or 1e9) < 5},
        {"metric": "Refusal (503) time p99 in the server (gunicorn's request time)",
         "value": f"{fmt(gated['refusal_server_p99_ms'], 'ms')} (p50 {fmt(gated['refusal_server_p50_ms'], 'ms')})",
         "baseline": f"{fmt(base['server_p99_ms'], 'ms')}: the same bare WSGI app",
         "ratio": round((gated["refusal_server_p99_ms"] or 0) / max(1e-9, base["server_p99_ms"]), 2),
         "target": "< 5 ms", "ok": (gated["refusal_server_p99_ms"] or 1e9) < 5},
    ]
    chart = draw(results, args.limit)
    for r in results.values():
        r["samples"] = r["samples"][::5]
    common.write_result(NAME, {
        "title": "Overload: 5x the drain rate, with and without the gate",
        "command": common.command_line(),
        "setup": {"machine": common.machine(), "worker": "the Procfile's worker line, concurrency 1",
                  "server": "the Procfile's web line (gunicorn)", "database": "SQLite (WAL)",
                  "job": JOB, "producers": f"{args.producers} hey processes, each paced to 5R/{args.producers} and started 1/(5R) apart, no keep-alive, loopback",
                  "floor": "the same producers, rate and duration against bench/constant_wsgi.py (gunicorn, the web line's "
                           "worker count), while the worker drains the open run's backlog"},
        "results": results, "summary": summary, "charts": [chart.name],
    })


def fmt(value, unit: str) -> str:
    return "n/a" if value is None else f"{value:.2f} {unit}"


def draw(results: dict, limit: int):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, r in results.items():
        ax.plot([t for t, _, _ in r["samples"]], [d for _, d, _ in r["samples"]], label=label)
    ax.axhline(limit, color="grey", linestyle="--", label=f"limit {limit}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("queue depth")
    ax.set_title("Queue depth under 5x overload")
    ax.legend()
    path = common.chart_path(NAME)
    fig.tight_layout()
    fig.savefig(path)
    return path


if __name__ == "__main__":
    main()
