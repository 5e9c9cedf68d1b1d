"""A project's plain Celery tasks (`@shared_task`, `@app.task`), recorded in the ledger as Celery runs them.

Opt-in by task name (JOBS_TRACK_CELERY_TASKS, shell-style patterns). The Job row follows Celery's own states:
queued when published, running when a worker starts it, retrying, succeeded or failed; its arguments, error and
traceback are kept (the result stays in django-celery-results' TaskResult, as Celery stores it). So the dashboard
shows them, keeps their history across restarts, and can run one again or cancel it.

They keep Celery's semantics: no claim, so a message delivered twice runs twice; no lease or recovery.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import uuid
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from ..infra import broker
from ..models import Job, JobError
from ..registry import get_kind
from .errors import JobStateError

logger = logging.getLogger(__name__)
S = Job.Status


def is_tracked(task_name: str | None) -> bool:
    """A task of the project's to record: its name matches JOBS_TRACK_CELERY_TASKS, and it is no platform task."""
    if not task_name or task_name.startswith(("jobs.", "celery.")) or get_kind(task_name) is not None:
        return False
    return any(fnmatch.fnmatchcase(task_name, pattern) for pattern in settings.JOBS_TRACK_CELERY_TASKS)


def _json(value):
    """Arguments as JSON; what is not JSON is kept as its repr, so that the row is written all the same."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)


def _task_id(task_id) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(task_id))
    except ValueError:
        return None


def tracked_task_published(*, task_id: str, name: str, args, kwargs, queue: str | None, eta: datetime | None = None,
                           retries: int = 0) -> None:
    """A tracked task was sent: a new row, or (a Celery retry's message, a run again) the row waits again."""
    pk = _task_id(task_id)
    if pk is None or retries:
        return  # a Celery retry's message: tracked_task_failed records the retry
    now = timezone.now()
    params = {"args": _json(list(args or [])), "kwargs": _json(dict(kwargs or {}))}
    queue = (queue or settings.CELERY_TASK_DEFAULT_QUEUE)[:64]
    try:
        with transaction.atomic():
            Job.objects.create(id=pk, kind=name[:200], params=params, queue=queue, tracked=True, status=S.QUEUED,
                               created_at=now, run_at=eta or now, published_at=now, attempt_limit=1)
    except IntegrityError:
        Job.objects.filter(pk=pk, tracked=True).update(status=S.QUEUED, published_at=now, updated_at=now)


def tracked_task_started(*, task_id: str, name: str, args, kwargs, queue: str | None, worker: str,
                         retries: int) -> None:
    """A worker started a run (the row is made here when its publisher did not record it: beat, another app)."""
    pk = _task_id(task_id)
    if pk is None:
        return
    now = timezone.now()
    updated = Job.objects.filter(pk=pk, tracked=True).update(
        status=S.RUNNING, started_at=now, attempts=retries + 1, attempt_limit=max(1, retries + 1),
        worker=worker[:200], next_attempt_at=None, updated_at=now)
    if not updated:
        params = {"args": _json(list(args or [])), "kwargs": _json(dict(kwargs or {}))}
        try:
            Job.objects.create(id=pk, kind=name[:200], params=params, queue=(queue or "default")[:64], tracked=True,
                               status=S.RUNNING, created_at=now, run_at=now, published_at=now, started_at=now,
                               attempts=retries + 1, attempt_limit=retries + 1, worker=worker[:200])
        except IntegrityError:
            logger.info("tracked task %s is a platform job's id; left alone", task_id)


def tracked_task_succeeded(*, task_id: str) -> None:
    now = timezone.now()
    Job.objects.filter(pk=_task_id(task_id), tracked=True).update(
        status=S.SUCCEEDED, finished_at=now, error="", updated_at=now)


@transaction.atomic
def tracked_task_failed(*, task_id: str, error: str, traceback: str, exception_class: str = "",
                        retry_at: datetime | None = None) -> None:
    """A run failed: for good, or (`retry_at`, Celery's retry) to run again then. Each failure is kept."""
    pk = _task_id(task_id)
    job = Job.objects.select_for_update().filter(pk=pk, tracked=True).first() if pk else None
    if job is None:
        return
    now = timezone.now()
    JobError.objects.create(job=job, attempt=max(1, job.attempts), error=error[:10_000], traceback=traceback,
                            worker=job.worker, exception_class=exception_class[:300])
    if retry_at is not None:
        Job.objects.filter(pk=pk).update(status=S.RETRYING, error=error[:2000], next_attempt_at=retry_at,
                                         updated_at=now)
    else:
        Job.objects.filter(pk=pk).update(status=S.FAILED, error=error[:2000], finished_at=now, updated_at=now)


def tracked_task_cancelled(*, task_id: str) -> bool:
    return Job.objects.filter(pk=_task_id(task_id), tracked=True, status=S.CANCELLED).exists()


def tracked_task_revoked(*, task_id: str) -> None:
    now = timezone.now()
    Job.objects.filter(pk=_task_id(task_id), tracked=True, status__in=[S.QUEUED, S.RETRYING, S.RUNNING]).update(
        status=S.CANCELLED, cancelled_at=now, finished_at=now, updated_at=now)


@transaction.atomic
def tracked_task_retry(*, job: Job) -> Job:
    """Send a failed or cancelled tracked task again, by its name, with its original arguments and its id."""
    changed = Job.objects.filter(pk=job.pk, tracked=True, status__in=[S.FAILED, S.CANCELLED]).update(
        status=S.QUEUED, error="", published_at=timezone.now(), started_at=None, finished_at=None,
        cancelled_at=None, next_attempt_at=None, updated_at=timezone.now())
    if not changed:
        job.refresh_from_db()
        raise JobStateError(f"a {job.status} task cannot be run again")
    params = job.params if isinstance(job.params, dict) else {}
    args, kwargs = params.get("args"), params.get("kwargs")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise JobStateError("its arguments were not JSON when it was sent: it cannot be sent again")
    TaskResult.objects.filter(task_id=str(job.id)).delete()
    transaction.on_commit(lambda: broker.send_by_name(task_name=job.kind, args=args, kwargs=kwargs,
                                                      task_id=str(job.id), queue=job.queue))
    job.refresh_from_db()
    return job


def tracked_task_cancel(*, job: Job) -> Job:
    """Revoke a tracked task (terminating its run if it has started) and record it cancelled."""
    now = timezone.now()
    was_running = job.status == S.RUNNING
    changed = Job.objects.filter(pk=job.pk, tracked=True, status__in=[S.QUEUED, S.RETRYING, S.RUNNING]).update(
        status=S.CANCELLED, cancelled_at=now, finished_at=now, updated_at=now)
    if not changed:
        job.refresh_from_db()
        raise JobStateError(f"a {job.status} task cannot be cancelled")
    transaction.on_commit(lambda: broker.revoke(str(job.id), terminate=was_running))
    job.refresh_from_db()
    return job
