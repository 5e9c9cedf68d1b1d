"""Submit latency: POST /api/jobs under gunicorn, at its measured maximum and at 50% and 90% of it,
against a view that returns a constant on the same server (the ceiling) and a view that does one
bare `.delay()` (hand-wired Celery). wrk on loopback; SQLite and PostgreSQL.

The server is the Procfile's web line (gunicorn, 2 sync workers, access log) with the bench-only
URLconf (bench/urls.py). No worker runs: the queue limit is raised so that nothing is refused,
and what is measured is the request, not the draining.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NAME = "submit_latency"
SUBMIT_BODY = json.dumps({"kind": "noop", "params": {}})
ENDPOINTS = {
    "constant": {"path": "/bench/constant", "method": "GET", "label": "constant view (ceiling)"},
    "submit": {"path": "/api/jobs", "method": "POST", "label": "POST /api/jobs (platform)"},
    "delay": {"path": "/bench/delay", "method": "POST", "label": "view doing one bare .delay()"},
}


def measure(engine: str, args) -> dict:
    redis = common.RedisServer(NAME)
    db = common.Database(engine, NAME)
    web = None
    try:
        env = common.platform_env(database_url=db.url, redis_url=redis.url, JOBS_QUEUE_LIMIT=str(10**9),
                                  CELERY_BROKER_URL=redis.url)
        db.migrate(env)
        token = common.create_user_token(env, "bench")
        web, base = common.start_web(env, name=f"{NAME}-{engine}")
        setup = {"database": db.version(), "redis": f"Redis {redis.version()} on loopback, no persistence"}

        def run(name: str, *, connections: int | None = None, seconds: float | None = None) -> dict:
            """wrk, closed loop: the maximum."""
            endpoint = ENDPOINTS[name]
            body = SUBMIT_BODY if endpoint["method"] == "POST" else ""
            return common.wrk(base + endpoint["path"], seconds=seconds or args.seconds, method=endpoint["method"],
                              body=body, token=token if name == "submit" else "",
                              connections=connections or args.connections)

        def paced(name: str, rate: float) -> dict:
            """hey, evenly spaced requests at a fixed rate: the latency at that load."""
            endpoint = ENDPOINTS[name]
            rows = common.hey_paced(base + endpoint["path"], rate=rate, seconds=args.seconds,
                                    clients=args.paced_clients, method=endpoint["method"],
                                    body=SUBMIT_BODY if endpoint["method"] == "POST" else "",
                                    token=token if name == "submit" else "")
            return common.hey_summary(rows, seconds=args.seconds, target_rate=rate)

        for name in ENDPOINTS:  # both gunicorn processes import and connect before anything is timed
            run(name, connections=4, seconds=1)
        results = {"max": {}, "paced": {}}
        for name in ENDPOINTS:
            results["max"][name] = run(name)
            print(f"  {engine} max {name:8s} {results['max'][name]['rate']:7.0f} req/s "
                  f"p99 {results['max'][name]['p99_ms']:.1f} ms", flush=True)
        for name in ("constant", "submit"):
            results["paced"][name] = {}
            for share in (0.5, 0.9):
                rate = results["max"][name]["rate"] * share
                result = paced(name, rate)
                results["paced"][name][str(share)] = result
                print(f"  {engine} {int(share * 100)}% {name:8s} target {rate:6.0f}/s got {result['rate']:6.0f}/s "
                      f"p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms", flush=True)
        return {"setup": setup, **results}
    finally:
        common.tear_down(web, redis=redis, db=db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3 if common.quick() else 10, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections for the maximum")
    parser.add_argument("--paced-clients", type=int, default=16, help="hey processes (one connection each) for the paced runs")
    args = parser.parse_args()
    if common.wrk_path() is None or common.hey_path() is None:
        sys.exit("wrk and hey are needed (Debian: apt-get install -y wrk hey); `make bench` installs them")

    engines, skipped = common.engines_to_measure()
    results = {}
    for engine in engines:
        print(f"{engine}: wrk {args.seconds:.0f} s per run", flush=True)
        results[engine] = measure(engine, args)

    summary = []
    for engine, r in results.items():
        ceiling, submit, delay = (r["max"][n]["rate"] for n in ("constant", "submit", "delay"))
        half = r["paced"]["submit"]["0.5"]
        summary.append({
            "metric": f"POST /api/jobs max throughput against a bare `.delay()` view, {engine}",
            "value": f"{submit:.0f} req/s",
            "baseline": f"{delay:.0f} req/s: a view doing one `.delay()`, nothing recorded, no auth",
            "ratio": round(submit / delay, 2),
            "target": "none (measured: what recording, auth and the gate add to publishing)",
            "ok": None,
        })
        summary.append({
            "metric": f"POST /api/jobs max throughput, {engine}",
            "value": f"{submit:.0f} req/s",
            "baseline": f"{ceiling:.0f} req/s constant view; {delay:.0f} req/s bare `.delay()` view",
            "ratio": round(submit / ceiling, 2),
            "target": ">= 0.5 x the constant view",
            "ok": submit / ceiling >= 0.5,
        })
        summary.append({
            "metric": f"POST /api/jobs p99 at 50% load, {engine}",
            "value": f"{half['p99_ms']:.1f} ms (p50 {half['p50_ms']:.1f} ms)",
            "baseline": f"{r['paced']['constant']['0.5']['p99_ms']:.1f} ms constant view at 50% of its max",
            "ratio": round(half["p99_ms"] / r["paced"]["constant"]["0.5"]["p99_ms"], 2),
            "target": "p99 < 25 ms",
            "ok": half["p99_ms"] < 25,
        })
    chart = draw(results)
    common.write_result(NAME, {
        "title": "Submit latency: POST /api/jobs vs a constant view, same gunicorn",
        "command": common.command_line(),
        "setup": {
            "machine": common.machine(),
            "server": "the Procfile's web line: gunicorn, 2 sync workers, access log to a file; DEBUG off",
            "load": f"wrk -t2 -c{args.connections}, closed loop, for the maximum; paced runs: "
                    f"{args.paced_clients} hey processes, one connection each, together at the fixed rate and "
                    f"started 1/rate apart (evenly spaced requests); {args.seconds:.0f} s each; loopback",
            "worker": "none (the queue limit is raised so that nothing is refused)",
            "databases": {e: r["setup"] for e, r in results.items()},
            "skipped": skipped,
        },
        "results": results,
        "notes": [
            "A view doing one bare `.delay()` is the floor of any endpoint that publishes through Celery, and "
            "on this machine that floor is itself under half the constant view: no such endpoint can reach "
            "0.5 x here. POST /api/jobs adds the token lookup (kept a second per process), the Job insert, "
            "the depth check (from memory, read in the background while submissions come) and the JSON in and out.",
            "What a publish costs, measured: the task-sent event (off by default, CELERY_TASK_SEND_SENT_EVENT) "
            "30-40%; kombu creating a Redis client object per publish about 20% (not changed: it is inside "
            "kombu's Redis transport).",
            "Paced runs send evenly spaced requests from 16 hey processes, which share the 2 cores with the "
            "server: at 90% of the constant view's maximum they cannot send as fast as asked (the rate column "
            "says what was sent), and their own work is in every latency figure.",
        ],
        "summary": summary,
        "charts": [chart.name] if chart else [],
    })


def draw(results: dict):
    if not results:
        return None
    plt = common.pyplot()
    engines = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    width = 0.25
    for i, name in enumerate(ENDPOINTS):
        rates = [results[e]["max"][name]["rate"] for e in engines]
        xs = [j + (i - 1) * width for j in range(len(engines))]
        ax.bar(xs, rates, width, label=ENDPOINTS[name]["label"])
        for x, rate in zip(xs, rates):
            ax.annotate(f"{rate:.0f}", (x, rate), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(engines)))
    ax.set_xticklabels(engines)
    ax.set_ylabel("requests per second (wrk, closed loop)")
    ax.set_title("Maximum throughput")
    ax.legend(fontsize=8)

    ax = axes[1]
    labels, p50s, p99s = [], [], []
    for e in engines:
        for name in ("constant", "submit"):
            for share in ("0.5", "0.9"):
                run = results[e]["paced"][name][share]
                labels.append(f"{e}\n{name}\n{int(float(share) * 100)}%")
                p50s.append(run["p50_ms"])
                p99s.append(run["p99_ms"])
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50s, 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99s, 0.4, label="p99")
    ax.axhline(25, color="grey", linestyle="--", linewidth=1, label="25 ms (p99 target at 50%)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("latency, ms")
    ax.set_title("Latency at 50% and 90% of each endpoint's maximum")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = common.chart_path(NAME)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
