"""The job-kind decorator and the registry of kinds (no Celery here: jobs.tasks makes the tasks from it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings
from pydantic import BaseModel


@dataclass(frozen=True)
class JobKind:
    """What the platform knows of a kind: its function, parameter schema and run options."""

    name: str
    func: Callable[..., Any]
    params_model: type[BaseModel]
    title: str
    description: str
    queue: str = "default"
    priority: int = 5
    soft_time_limit: int | None = None
    time_limit: int | None = None
    rate_limit: str | None = None
    max_attempts: int = 3
    retry_on: tuple[type[BaseException], ...] = ()
    retry_backoff_base: float = 2.0
    retry_backoff_max: float = 600.0
    inline: bool = False
    terminable: bool = False
    on_submit: Callable[[Any, dict], None] | None = None
    # The Django task (`@task`) this kind runs, when it is one (jobs.task_backend registers those).
    task: Any = None

    @property
    def task_name(self) -> str:
        return f"jobs.{self.name}"

    def params_schema(self) -> dict:
        return self.params_model.model_json_schema()


_registry: dict[str, JobKind] = {}


def job_kind(
    name: str,
    *,
    params: type[BaseModel],
    title: str = "",
    queue: str = "default",
    priority: int = 5,
    soft_time_limit: int | None = None,
    time_limit: int | None = None,
    rate_limit: str | None = None,
    max_attempts: int = 3,
    retry_on: tuple[type[BaseException], ...] = (),
    retry_backoff_base: float = 2.0,
    retry_backoff_max: float = 600.0,
    inline: bool = False,
    terminable: bool = False,
    on_submit: Callable[[Any, dict], None] | None = None,
):
    """Register `func(ctx, params) -> JSON value` as a job kind.

    When the app is ready, jobs.tasks makes it a Celery task named `jobs.<name>`, so that
    Flower, rate limits and routing work per kind.
    `on_submit(job, params)` runs inside the submitting transaction, for what the user must see
    at once (the fan-out kind puts the post on its author's own timeline there).
    """
    if queue not in settings.JOBS_QUEUES:
        raise ValueError(f"job kind {name!r}: queue {queue!r} is not one of JOBS_QUEUES {settings.JOBS_QUEUES}")
    if not 0 <= priority <= 9:
        raise ValueError(f"job kind {name!r}: priority must be 0-9")
    hard_limit = time_limit or settings.CELERY_TASK_TIME_LIMIT
    if hard_limit > settings.JOBS_MAX_TIME_LIMIT:
        # A message unacknowledged past the visibility timeout is delivered again while the first
        # run may still be going; JOBS_MAX_TIME_LIMIT keeps the two apart.
        raise ValueError(f"job kind {name!r}: time_limit {hard_limit}s is over JOBS_MAX_TIME_LIMIT")
    soft_limit = soft_time_limit or settings.CELERY_TASK_SOFT_TIME_LIMIT
    if soft_limit > hard_limit:
        # Celery refuses to send such a task: every publish would fail and the job never run.
        raise ValueError(f"job kind {name!r}: soft_time_limit {soft_limit}s is over time_limit {hard_limit}s")
    if max_attempts < 1:
        raise ValueError(f"job kind {name!r}: max_attempts must be at least 1")

    def decorate(func):
        doc = (func.__doc__ or "").strip()
        kind = JobKind(
            name=name,
            func=func,
            params_model=params,
            title=title or name.replace("_", " ").capitalize(),
            description=doc,
            queue=queue,
            priority=priority,
            soft_time_limit=soft_time_limit,
            time_limit=time_limit,
            rate_limit=rate_limit,
            max_attempts=max_attempts,
            retry_on=tuple(retry_on),
            retry_backoff_base=retry_backoff_base,
            retry_backoff_max=retry_backoff_max,
            inline=inline,
            terminable=terminable,
            on_submit=on_submit,
        )
        register(kind)
        return func

    return decorate


def register(kind: JobKind) -> JobKind:
    """Add a kind to the registry; the same kind again is a no-op, another one under its name an error."""
    known = _registry.get(kind.name)
    same_task = known is not None and known.task is not None and kind.task is not None and \
        known.task.func is kind.task.func
    if known is not None and known.func is not kind.func and not same_task:
        raise ValueError(f"job kind {kind.name!r} is registered twice")
    _registry.setdefault(kind.name, kind)
    return _registry[kind.name]


def get_kind(name: str) -> JobKind | None:
    return _registry.get(name)


def all_kinds() -> list[JobKind]:
    return sorted(_registry.values(), key=lambda k: k.name)


def hard_time_limit(kind: JobKind) -> int:
    return kind.time_limit or settings.CELERY_TASK_TIME_LIMIT
