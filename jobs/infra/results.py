"""The result backend: django-celery-results' database backend, except for the platform's jobs, whose TaskResult
rows only the services write."""
from __future__ import annotations

import uuid

from django_celery_results.backends.database import DatabaseBackend

from ..models import Job
from ..registry import all_kinds


def is_platform_job(task_id: str, task_name: str | None) -> bool:
    """A task of a job kind; without a name, an id the Job table holds."""
    if task_name:
        return any(kind.task_name == task_name for kind in all_kinds())
    try:
        return Job.objects.filter(pk=uuid.UUID(str(task_id)), tracked=False).exists()
    except ValueError:
        return False


class LedgerResultBackend(DatabaseBackend):
    """Leaves platform jobs' rows alone: their runs finish through the services, which write the one result.

    Celery writes states of its own on a job's id where the services have the last word: RETRY when it
    cancels a run on a lost broker connection (which could land milliseconds after the finish wrote
    SUCCESS), REVOKED, a worker-lost FAILURE, STARTED. Every other task's result is stored as usual.
    """

    def _store_result(self, task_id, result, status, traceback=None, request=None, using=None):
        if is_platform_job(task_id, getattr(request, "task", None)):
            return result
        return super()._store_result(task_id, result, status, traceback=traceback, request=request, using=using)
