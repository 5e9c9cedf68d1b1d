"""Reads: job lists and lookups scoped to the user, for views, the API and the admin."""
from __future__ import annotations

import hashlib
import uuid

from django.db.models import Count, QuerySet
from django.utils import timezone
from django_celery_results.models import TaskResult

from .models import ApiToken, Job


def job_list(*, user, status: str | None = None, kind: str | None = None) -> QuerySet[Job]:
    """The user's jobs (staff: everyone's), newest first, optionally filtered."""
    qs = Job.objects.visible_to(user).select_related("owner")
    if status:
        qs = qs.filter(status=status)
    if kind:
        qs = qs.filter(kind=kind)
    return qs.order_by("-created_at", "-id")


def job_get(*, user, job_id) -> Job | None:
    """One job if the user may see it; None otherwise (another user's job does not exist for them)."""
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        return None
    return Job.objects.visible_to(user).select_related("owner").filter(pk=pk).first()


def job_result(*, job: Job) -> TaskResult | None:
    return TaskResult.objects.filter(task_id=str(job.id)).first()


def job_result_value(*, job: Job):
    """The stored result of a job, decoded from its TaskResult; None when there is none."""
    from celery import current_app

    result = job_result(job=job)
    if result is None or result.result is None:
        return None
    return current_app.backend.decode_content(result, result.result)


def job_status_counts(*, user) -> dict[str, int]:
    counts = dict(Job.objects.visible_to(user).values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return {status: counts.get(status, 0) for status in Job.Status.values}


def api_token_user(*, plain: str):
    """The user a bearer token belongs to, or None for an unknown or revoked token."""
    digest = hashlib.sha256(plain.encode()).hexdigest()
    token = ApiToken.objects.select_related("user").filter(key_hash=digest, revoked_at__isnull=True).first()
    if token is None or not token.user.is_active:
        return None
    # Cheap enough to keep up to date, and tells the user which tokens are still in use.
    if token.last_used_at is None or (timezone.now() - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user


def api_tokens_of(*, user) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user)
