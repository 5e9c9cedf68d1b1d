"""Celery's side of the platform: a task per job kind, and the housekeeping tasks. Each loads by id and calls
one service."""
from __future__ import annotations

import time

from billiard.exceptions import WorkerLostError
from celery import Task, current_app, shared_task
from celery.signals import task_postrun, task_prerun
from celery.worker.request import Request
from django.db import close_old_connections

from . import aggregation, services
from .infra.metrics import PUBLISHED_AT_HEADER
from .registry import JobKind, all_kinds

# Housekeeping task names. They name rows of django-celery-beat's PeriodicTask table that existing
# installations hold, so they keep the module path they were first published under.
PUBLISH_DUE_TASK = "jobs.periodic.publish_due_jobs"
AGGREGATE_TASK = "jobs.periodic.aggregate_job_stats"
RECOVER_TASK = "jobs.periodic.recover_lost_jobs"
RETENTION_TASK = "jobs.periodic.apply_retention"
# The task a user schedule runs: it submits one job of the kind named in its kwargs.
SCHEDULED_JOB_TASK = "jobs.periodic.submit_scheduled_job"


@task_prerun.connect
@task_postrun.connect
def _recycle_db_connections(sender=None, **kwargs) -> None:
    """Per task what Django does per request: drop a connection that is broken or past CONN_MAX_AGE, keep the rest."""
    if not getattr(getattr(sender, "request", None), "is_eager", False):
        close_old_connections()


class JobRequest(Request):
    """Records on the Job what happens to a run outside its own process: killed, or over its hard limit."""

    def on_timeout(self, soft, timeout):
        super().on_timeout(soft, timeout)
        if not soft:
            services.job_run_failed(job_id=self.id, token=None, retryable=False,
                                    error=f"timed out after {timeout}s (hard time limit); its process was killed")

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        # The pool hands over the error wrapped with its traceback.
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, WorkerLostError):
            # With attempts left the job becomes `retrying` and the requeued message claims it;
            # without, it ends `failed` and the requeued message is dropped at claim.
            services.job_run_failed(job_id=self.id, token=None, retryable=True, error=f"worker process lost: {exc}")
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class JobTask(Task):
    """Base class of every kind's task."""

    Request = JobRequest
    # The Job row and its TaskResult, written by the services, hold the outcome; Celery writing it
    # again would cost a second write per job and could record a second result for a duplicate.
    ignore_result = True
    track_started = False
    acks_late = True
    reject_on_worker_lost = True


def _waited(request) -> float | None:
    """How long a first delivery waited in its queue (retries, sent with a countdown, did not queue)."""
    published_at = (getattr(request, "headers", None) or {}).get(PUBLISHED_AT_HEADER)
    if getattr(request, "retries", 0) or not isinstance(published_at, (int, float)):
        return None
    return max(0.0, time.time() - published_at)


def make_kind_task(kind: JobKind):
    """The Celery task that runs `kind`: named after it, on its queue, with its limits."""

    def run(self, job_id: str, params: dict):
        outcome = services.execute_job(kind=kind, job_id=job_id, params=params, worker=self.request.hostname or "",
                                       wait_seconds=_waited(self.request))
        if outcome.status == "retrying":
            raise self.retry(countdown=outcome.retry_in, exc=outcome.error, max_retries=None)
        if outcome.status == "failed":
            raise outcome.error
        return outcome.status

    run.__name__ = kind.name
    run.__doc__ = kind.description
    options = dict(name=kind.task_name, bind=True, base=JobTask, queue=kind.queue)
    for option in ("soft_time_limit", "time_limit", "rate_limit"):
        if getattr(kind, option) is not None:
            options[option] = getattr(kind, option)
    return shared_task(**options)(run)


def register_kind_tasks() -> None:
    """Make a task of every registered kind that has none yet (the app calls it when ready)."""
    for kind in all_kinds():
        if kind.task_name not in current_app.tasks:
            make_kind_task(kind)


@shared_task(name=PUBLISH_DUE_TASK, ignore_result=True)
def publish_due_jobs() -> int:
    """Publish jobs whose run_at has come (scheduled runs live in the database, not as ETA messages)."""
    return services.jobs_publish_due()


@shared_task(name=SCHEDULED_JOB_TASK, bind=True, ignore_result=True)
def submit_scheduled_job(self, kind: str, params: dict | None = None, owner: str | None = None) -> str:
    # django-celery-beat names the schedule in a header of every message it sends; a worker puts
    # message headers on the request, an eager apply() keeps them under `headers`.
    schedule_name = (getattr(self.request, "periodic_task_name", None)
                     or (self.request.headers or {}).get("periodic_task_name") or "")
    return services.job_submit_scheduled(schedule_name=schedule_name, kind=kind, params=params, owner=owner,
                                         run_id=self.request.id)


@shared_task(name=AGGREGATE_TASK, ignore_result=True)
def aggregate_job_stats() -> int:
    return aggregation.aggregate_jobs().jobs


@shared_task(name=RECOVER_TASK, ignore_result=True)
def recover_lost_jobs() -> dict[str, int]:
    return services.recover_jobs()


@shared_task(name=RETENTION_TASK, ignore_result=True)
def apply_retention() -> int:
    return services.delete_expired()
