"""The three brokers as the platform uses them: submit-to-start latency of no-op jobs with one worker, the cost of
a submission's publish and of a depth check, and what was lost or delivered twice, on Redis, RabbitMQ and
Amazon SQS's emulator (moto on loopback: its figures say nothing of AWS's latency).

One SQLite database and one platform Redis (counters, beat's lock) for the whole run; per broker, the
Procfile's worker line (`--queues default`, 2 processes) and a driver process with that broker's settings.
The driver submits N no-op jobs through the submit service one at a time, paced (one every --gap ms, well
under what the worker drains), so that what is measured is a message's way from commit to claim rather than
a queue's backlog; latency is the job's started_at minus its created_at (both stamped on this machine).
RabbitMQ is the one on 127.0.0.1:5672 (guest), in a virtual host made for the run (rabbitmqctl) when it can.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NAME = "brokers"
RABBITMQ = ("127.0.0.1", 5672)
DROPPED = "dropped message for a job that is not claimable"


def child(args) -> None:
    """Runs with one broker's environment: a worker, then N paced submissions, their latencies and counts."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django_celery_results.models import TaskResult

    from jobs import services
    from jobs.infra import broker
    from jobs.models import Job

    user = get_user_model().objects.get_or_create(username="bench")[0]
    log_path = common.WORK_DIR / f"{NAME}-{args.broker}-worker-{uuid.uuid4().hex[:6]}.log"
    worker = common.start_procfile("worker", env={**os.environ, "WORKER_QUEUES": "default"}, log_path=log_path)
    try:
        common.wait_worker_ready(worker)
        for _ in range(args.warmup):  # connections, queues and the worker's first receive
            job = services.job_submit(user=user, kind="noop").job
            common.wait_until(lambda: Job.objects.filter(pk=job.pk, status="succeeded").exists(), timeout=60)
        ids, publish_ms = [], []
        for _ in range(args.n):
            start = time.perf_counter()
            ids.append(services.job_submit(user=user, kind="noop").job.pk)
            publish_ms.append((time.perf_counter() - start) * 1000)
            time.sleep(args.gap / 1000)
        try:
            common.wait_until(lambda: Job.objects.filter(pk__in=ids, status="succeeded").count() == len(ids),
                              timeout=args.settle, interval=0.2, what="every job to succeed")
        except AssertionError:
            pass  # counted below as lost
        done = Job.objects.filter(pk__in=ids, status="succeeded")
        latency_ms = [(j.started_at - j.created_at).total_seconds() * 1000 for j in done]
        depth_ms = []
        for _ in range(args.depth_reads):
            start = time.perf_counter()
            broker.read_depths(["default", "cpu", "io"], keys=[])
            depth_ms.append((time.perf_counter() - start) * 1000)
        time.sleep(2)  # a copy delivered late is dropped (and logged) by now
        out = {
            "jobs": len(ids),
            "succeeded": done.count(),
            "lost": len(ids) - done.count(),
            "run_twice": Job.objects.filter(pk__in=ids, attempts__gt=1).count(),
            "copies_dropped": worker.log().count(DROPPED),
            "results": TaskResult.objects.filter(task_id__in=[str(i) for i in ids]).count(),
            "latency_ms": latency_ms,
            "publish_ms": publish_ms,
            "depth_ms": depth_ms,
        }
    finally:
        worker.stop()
    Path(args.out).write_text(json.dumps(out))


def rabbitmq_vhost() -> tuple[str | None, str]:
    """A virtual host of this run's own on the local RabbitMQ (None: use "/"), and what was done."""
    import socket

    try:
        socket.create_connection(RABBITMQ, timeout=1).close()
    except OSError:
        return None, "no RabbitMQ answers on 127.0.0.1:5672"
    vhost = f"jobs-bench-{uuid.uuid4().hex[:8]}"
    try:
        for cmd in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
            subprocess.run(["rabbitmqctl", "-q", *cmd], check=True, timeout=60, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return "/", "rabbitmqctl not usable: the default virtual host"
    return vhost, f"virtual host {vhost}, deleted at the end"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=50 if common.quick() else 300, help="jobs per broker")
    parser.add_argument("--gap", type=float, default=20, help="ms between submissions")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--depth-reads", type=int, default=50 if common.quick() else 200)
    parser.add_argument("--settle", type=float, default=120, help="seconds to wait for the last jobs")
    args = parser.parse_args()
    if args.child:
        return child(args)

    from tests.support import SqsServer, SqsServerUnavailable

    redis = common.RedisServer(NAME)
    db = common.Database("sqlite", NAME)
    sqs = SqsServer(common.WORK_DIR / f"sqs-{uuid.uuid4().hex[:8]}")
    vhost, vhost_note = rabbitmq_vhost()
    results, skipped, setup = {}, {}, {}
    try:
        base = common.platform_env(database_url=db.url, redis_url=redis.url)
        db.migrate(base)
        brokers = {"redis": {}}
        if vhost is None:
            skipped["rabbitmq"] = vhost_note
        else:
            brokers["rabbitmq"] = {"CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost.lstrip('/')}"}
            setup["rabbitmq"] = vhost_note
        try:
            sqs.start()
            brokers["sqs_emulator"] = {**SqsServer.ENV, "CELERY_BROKER_URL": sqs.url,
                                       "JOBS_SQS_QUEUE_PREFIX": f"bench-{uuid.uuid4().hex[:6]}-"}
            setup["sqs_emulator"] = "moto_server on loopback (in memory), long polls of 20 s: not AWS"
        except SqsServerUnavailable as exc:
            skipped["sqs_emulator"] = str(exc)
        for name, env in brokers.items():
            print(f"{name}: {args.n} no-op jobs, one every {args.gap:g} ms", flush=True)
            data = common.run_child("bench.bench_brokers", env={**base, **env}, timeout=args.settle + 600, args=[
                "--broker", name, "-n", str(args.n), "--gap", str(args.gap), "--warmup", str(args.warmup),
                "--depth-reads", str(args.depth_reads), "--settle", str(args.settle)])
            lat, pub, depth = data["latency_ms"], data["publish_ms"], data["depth_ms"]
            results[name] = {
                **{k: data[k] for k in ("jobs", "succeeded", "lost", "run_twice", "copies_dropped", "results")},
                "latency_p50_ms": common.median(lat), "latency_p95_ms": common.percentile(lat, 95),
                "latency_max_ms": max(lat) if lat else None,
                "publish_p50_ms": common.median(pub), "publish_p95_ms": common.percentile(pub, 95),
                "depth_p50_ms": common.median(depth), "depth_p95_ms": common.percentile(depth, 95),
            }
            r = results[name]
            print(f"  submit-to-start p50 {r['latency_p50_ms']:.1f} ms, p95 {r['latency_p95_ms']:.1f} ms; "
                  f"lost {r['lost']}, run twice {r['run_twice']}, copies dropped {r['copies_dropped']}", flush=True)
    finally:
        sqs.stop()
        if vhost not in (None, "/"):
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], timeout=60, capture_output=True)
        redis.stop()
        db.drop()

    summary = [{
        "metric": f"Submit-to-start latency p50 / p95, no-op jobs, one worker, {name}",
        "value": f"{r['latency_p50_ms']:.1f} / {r['latency_p95_ms']:.1f} ms",
        "baseline": "", "ratio": None,
        "target": "none (measured; the emulator's is not AWS's)" if name == "sqs_emulator" else "none (measured)",
        "ok": r["lost"] == 0 and r["results"] == r["jobs"],
    } for name, r in results.items()]
    common.write_result(NAME, {
        "title": "Brokers: Redis, RabbitMQ and an SQS emulator as the platform uses them",
        "command": common.command_line(),
        "setup": {"machine": common.machine(), "jobs_per_broker": args.n, "gap_ms": args.gap,
                  "worker": "the Procfile's worker line, --queues default, 2 prefork processes",
                  "database": "SQLite (WAL)", **setup, "skipped": skipped},
        "results": results,
        "summary": summary,
        "charts": [],
    })
    print(f"wrote {common.RESULTS_DIR / (NAME + '.json')}")


if __name__ == "__main__":
    main()
