"""Why a queue: the request time of an expensive kind run inline in the request, against the same
work submitted as a job (the user waits for the job's insert and its publish only).

Same gunicorn (the Procfile's web line, bench URLconf), one request at a time from one client on
loopback; the inline view calls the kind's function itself, as a site without a queue would.
A worker runs the submitted jobs meanwhile, as it would in production; SQLite and PostgreSQL.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NAME = "inline_vs_queue"
KIND = "steps"  # works (hashing) for steps x step_seconds: the same work inline and in the worker


def measure(engine: str, args) -> dict:
    import httpx

    redis = common.RedisServer(NAME)
    db = common.Database(engine, NAME)
    web = worker = None
    try:
        env = common.platform_env(database_url=db.url, redis_url=redis.url)
        db.migrate(env)
        token = common.create_user_token(env, "bench")
        web, base = common.start_web(env, name=f"{NAME}-{engine}")
        worker = common.start_procfile("worker", env=env, log_path=common.WORK_DIR / f"{NAME}-{engine}-worker.log")
        common.wait_worker_ready(worker)
        body = {"kind": KIND, "params": {"steps": args.steps, "step_seconds": args.step_seconds}}
        headers = {"Authorization": f"Bearer {token}"}
        times = {"inline": [], "queued": []}
        job_ids = []
        with httpx.Client(timeout=120) as client:
            for i in range(args.requests + 1):
                for how, path in (("inline", "/bench/inline"), ("queued", "/api/jobs")):
                    start = time.perf_counter()
                    response = client.post(base + path, json=body, headers=headers)
                    elapsed = (time.perf_counter() - start) * 1000
                    assert response.status_code in (200, 202), response.text
                    if how == "queued":
                        job_ids.append(response.json()["id"])
                    if i:  # the first of each warms the server process
                        times[how].append(elapsed)
            # The jobs did the same work: wait for them, and read how long one took in the worker.
            deadline = time.monotonic() + 600
            runs = []
            for job_id in job_ids:
                while True:
                    job = client.get(f"{base}/api/jobs/{job_id}", headers=headers).json()
                    if job["status"] in ("succeeded", "failed"):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("jobs did not finish")
                    time.sleep(0.2)
                assert job["status"] == "succeeded", job
                runs.append(_seconds(job["finished_at"]) - _seconds(job["started_at"]))
        result = {
            "setup": {"database": db.version(), "redis": f"Redis {redis.version()} on loopback, no persistence"},
            "inline_ms": times["inline"],
            "queued_ms": times["queued"],
            "job_run_s": runs,
        }
        for how in ("inline", "queued"):
            result[f"{how}_p50_ms"] = common.percentile(times[how], 50)
            result[f"{how}_p99_ms"] = common.percentile(times[how], 99)
        print(f"  {engine}: inline p50 {result['inline_p50_ms']:.0f} ms, queued p50 {result['queued_p50_ms']:.1f} ms "
              f"(job run p50 {common.median(runs) * 1000:.0f} ms in the worker)", flush=True)
        return result
    finally:
        common.tear_down(worker, web, redis=redis, db=db)


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5 if common.quick() else 20, help="requests of each way")
    parser.add_argument("--steps", type=int, default=2 if common.quick() else 4, help="steps of work per request")
    parser.add_argument("--step-seconds", type=float, default=0.1 if common.quick() else 0.25,
                        help="seconds of hashing per step")
    args = parser.parse_args()
    work = f"{KIND}(steps={args.steps}, step_seconds={args.step_seconds})"
    engines, skipped = common.engines_to_measure()
    results = {}
    for engine in engines:
        print(f"{engine}: {args.requests} requests each way, {work}", flush=True)
        results[engine] = measure(engine, args)
    summary = [{
        "metric": f"Request time, {work} submitted as a job, {engine}",
        "value": f"{r['queued_p50_ms']:.1f} ms p50 ({r['queued_p99_ms']:.1f} ms p99)",
        "baseline": f"{r['inline_p50_ms']:.0f} ms p50 run inline in the request",
        "ratio": round(r["queued_p50_ms"] / r["inline_p50_ms"], 3),
        "target": "the user waits for the insert and the publish only",
        "ok": r["queued_p99_ms"] < r["inline_p50_ms"],
    } for engine, r in results.items()]
    chart = draw(results, work)
    common.write_result(NAME, {
        "title": "Why a queue: an expensive kind inline in the request vs submitted as a job",
        "command": common.command_line(),
        "setup": {
            "machine": common.machine(),
            "server": "the Procfile's web line (gunicorn, 2 sync workers), bench URLconf; DEBUG off",
            "client": "httpx, one request at a time, loopback; the first request of each way not counted",
            "worker": "the Procfile's worker line, running the submitted jobs meanwhile",
            "work": f"{work}: {args.steps * args.step_seconds:g} s of hashing per request",
            "databases": {e: r["setup"] for e, r in results.items()},
            "skipped": skipped,
        },
        "results": results,
        "summary": summary,
        "charts": [chart.name] if chart else [],
    })


def draw(results: dict, work: str):
    if not results:
        return None
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels, values, colors = [], [], []
    for engine, r in results.items():
        for how, color in (("inline", "tab:red"), ("queued", "tab:green")):
            labels.append(f"{engine}\n{how}")
            values.append(r[f"{how}_p50_ms"])
            colors.append(color)
    bars = ax.bar(range(len(values)), values, color=colors)
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.1f} ms", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("request time p50, ms (log scale)")
    ax.set_title(f"{work}: inline vs submitted as a job")
    fig.tight_layout()
    path = common.chart_path(NAME)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
