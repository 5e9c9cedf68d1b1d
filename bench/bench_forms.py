"""Special forms against their plain ones, in one process, alternating: the hand-built statements of a job's
path (jobs/services/statements.py) against the ORM, Celery reading its settings from a plain copy against
Django's settings object, and the per-process token cache against a query per request.

Each pair runs in blocks of the same size, plain and special taking turns, on this run's own Redis and
database (SQLite and PostgreSQL); the figure is the median time per operation over the blocks. The
end-to-end effect of the statements is in bench_throughput's before/after runs (bench/README.md,
"Complexity that pays").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NAME = "forms"


def timed_blocks(pairs: dict, *, blocks: int, per_block: int) -> dict:
    """{name: {"plain": us per op, "special": us per op}}; each block prepares its own inputs untimed."""
    results = {}
    for name, (prepare, plain, special) in pairs.items():
        times = {"plain": [], "special": []}
        for block in range(blocks):
            for form, run in (("plain", plain), ("special", special)) if block % 2 == 0 else (
                    ("special", special), ("plain", plain)):
                inputs = prepare(per_block)
                started = time.perf_counter()
                for item in inputs:
                    run(item)
                times[form].append((time.perf_counter() - started) / per_block * 1e6)
        results[name] = {form: statistics.median(values) for form, values in times.items()}
        print(f"  {name:10s} plain {results[name]['plain']:8.1f} us  special {results[name]['special']:8.1f} us",
              flush=True)
    return results


def child(args) -> None:
    import django

    django.setup()
    from celery import Celery
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.db.models import F
    from django.utils import timezone
    from django_celery_results.models import TaskResult

    from jobs import services
    from jobs.infra import broker
    from jobs.models import Job
    from jobs.services import statements

    user = get_user_model().objects.create_user("bench-forms", password=None)
    S = Job.Status

    def new_job(status=S.QUEUED):
        now = timezone.now()
        return Job(id=uuid.uuid4(), kind="noop", params={}, owner=user, queue="default", attempt_limit=3,
                   created_at=now, run_at=now, status=status)

    def queued(n):
        jobs = [new_job() for _ in range(n)]
        Job.objects.bulk_create(jobs)
        return jobs

    def running(n):
        jobs = queued(n)
        token = uuid.uuid4()
        Job.objects.filter(pk__in=[j.pk for j in jobs]).update(status=S.RUNNING, claim_token=token, attempts=1)
        return [(j, token) for j in jobs]

    def insert_plain(job):
        with transaction.atomic():
            job.save(force_insert=True)

    def insert_special(job):
        statement = statements.Insert(job)
        with transaction.atomic():
            statement.run()

    def claim_plain(job):
        now = timezone.now()
        with transaction.atomic():
            Job.objects.filter(pk=job.pk, attempts__lt=F("attempt_limit"), run_at__lte=now).filter(
                statements.claimable(now)).not_paused().update(status=S.RUNNING, claim_token=uuid.uuid4(),
                                                  attempts=F("attempts") + 1, worker="w", started_at=now,
                                                  lease_expires_at=now, next_attempt_at=None, updated_at=now)
            Job.objects.filter(pk=job.pk).values_list("attempts", flat=True).get()

    def claim_special(job):
        now = timezone.now()
        statements.claim(job_id=str(job.pk), token=uuid.uuid4(), worker="w", now=now, lease=now)

    def result_fields(job):
        content_type, encoding, encoded = broker.encode_result(None)
        return dict(task_id=str(job.pk), task_name="jobs.noop", task_args=json.dumps([str(job.pk), {}]),
                    task_kwargs="{}", status="SUCCESS", worker="w", content_type=content_type,
                    content_encoding=encoding, result=encoded, traceback=None, meta='{"children": []}')

    def finish_plain(item):
        job, token = item
        now = timezone.now()
        with transaction.atomic():
            Job.objects.filter(pk=job.pk, claim_token=token, status=S.RUNNING).update(
                status=S.SUCCEEDED, finished_at=now, claim_token=None, lease_expires_at=None,
                progress_done=F("progress_total"), updated_at=now)
            f = result_fields(job)
            TaskResult.objects.store_result(f["content_type"], f["content_encoding"], f["task_id"], f["result"],
                                            f["status"], traceback=None, meta=f["meta"], task_name=f["task_name"],
                                            task_args=f["task_args"], task_kwargs="{}", worker="w")

    def finish_special(item):
        job, token = item
        finish = statements.Finish(job_id=str(job.pk), token=token, now=timezone.now())
        row = statements.Insert(TaskResult(**result_fields(job)), replace_on="task_id")
        with transaction.atomic(using=finish.alias):
            finish.run()
            row.run()

    class CopiedSettings(dict):
        """What project/celery.py would hand Celery instead of the settings object: a plain copy."""

    copied = CopiedSettings({name: getattr(settings, name) for name in dir(settings) if name.startswith("CELERY_")})
    apps = {}
    for form, source in (("plain", "django.conf:settings"), ("special", copied)):
        app = Celery(f"bench-forms-{form}")
        app.config_from_object(source, namespace="CELERY")
        apps[form] = app

    def publish(form):
        def run(_):
            job_id = str(uuid.uuid4())
            apps[form].send_task("jobs.noop", args=(job_id, {}), task_id=job_id, queue="bench-forms", priority=4,
                                 headers={"jobs_published_at": time.time()})
        return run

    token, plain_token = services.api_token_create(user=user)

    def token_lookup(seconds):
        def run(_):
            settings.JOBS_TOKEN_CACHE_SECONDS = seconds
            services.api_token_user(plain=plain_token)
        return run

    nothing = lambda n: range(n)  # noqa: E731 - inputs of the pairs that need none
    pairs = {
        "insert": (lambda n: [new_job() for _ in range(n)], insert_plain, insert_special),
        "claim": (queued, claim_plain, claim_special),
        "finish": (running, finish_plain, finish_special),
        "publish": (nothing, publish("plain"), publish("special")),
        "token": (nothing, token_lookup(0), token_lookup(1.0)),
    }
    for app in apps.values():  # connect before anything is timed
        publish_once = app.send_task
        publish_once("jobs.noop", args=("warm", {}), queue="bench-forms")
    results = timed_blocks(pairs, blocks=args.blocks, per_block=args.per_block)
    with open(args.out, "w") as f:
        json.dump(results, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="sqlite", help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=int, default=4 if common.quick() else 10, help="blocks of each form")
    parser.add_argument("--per-block", type=int, default=50 if common.quick() else 300, help="operations per block")
    args = parser.parse_args()
    if args.child:
        return child(args)
    results, setups, skipped = common.each_engine(
        NAME, "bench.bench_forms", announce=f"{args.blocks} blocks x {args.per_block} operations of each form",
        child_args=lambda engine: ["--engine", engine, "--blocks", str(args.blocks), "--per-block", str(args.per_block)])
    what = {"insert": "Job insert at submit (ORM save vs prepared INSERT)",
            "claim": "claim (ORM UPDATE + SELECT vs UPDATE ... RETURNING)",
            "finish": "finish (ORM UPDATE + store_result vs prepared UPDATE + upsert)",
            "publish": "publish (Celery reading Django's settings vs a plain copy)",
            "token": "token lookup (a query per request vs kept 1 s per process)"}
    summary = [{
        "metric": f"{what[name]}, {engine}",
        "value": f"{r['special']:.0f} us special",
        "baseline": f"{r['plain']:.0f} us plain",
        "ratio": round(r["special"] / r["plain"], 2),
        "target": "special kept only at <= 0.9 x the plain form",
        "ok": r["special"] <= 0.9 * r["plain"],
    } for engine, rows in results.items() for name, r in rows.items()]
    common.write_result(NAME, {
        "title": "Complexity that pays",
        "command": common.command_line(),
        "setup": {"machine": common.machine(), "blocks": args.blocks, "per_block": args.per_block,
                  "databases": setups, "skipped": skipped},
        "results": results,
        "summary": summary,
        "charts": [],
    })


if __name__ == "__main__":
    main()
