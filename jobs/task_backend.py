"""Django's task API (`django.tasks` on Django 6, the `django-tasks` backport on 5.2) on the platform.

    TASKS = {"default": {"BACKEND": "jobs.task_backend.PlatformTaskBackend", "QUEUES": JOBS_QUEUES}}

A `@task` function is a job kind: the first time its Task is made (at import, when the decorator
runs) the backend registers a kind named after the function's module path, whose parameters are the
function's own (a pydantic model derived from its signature: typed fields where it has type hints, any
JSON value where not), and whose Celery task is `jobs.<module path>`. So `enqueue()` goes through the
submit service like any submission (validation, back pressure, the Job row, publish after commit),
a worker claims and runs it like any job, and the dashboard, the API and Flower show it.

What a kind has and a bare function lacks, it gets from the backend's OPTIONS: MAX_ATTEMPTS (3: a
run lost with its worker runs again; an exception the function raises fails the task at once, as
Django's API has it).
"""
from __future__ import annotations

import inspect
import math
import re
import typing
from collections import OrderedDict
import traceback as tb
from typing import Any

from django.conf import settings
from django.core import checks
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

try:  # Django 6.0 and later
    from django.tasks import TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
except ImportError:  # Django 5.2 with the backport
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

from . import selectors, services
from .models import Job
from .registry import JobKind, get_kind, register
from .tasks import register_kind_tasks

__all__ = ["PlatformTaskBackend", "QueueFull", "BrokerUnavailable", "platform_priority"]

# What a refused enqueue raises (back pressure): `queue`, `depth`, `limit` and `retry_after` (seconds).
QueueFull = services.QueueFull
BrokerUnavailable = services.BrokerUnavailable

STATUS = {
    Job.Status.QUEUED: TaskResultStatus.READY,
    Job.Status.RETRYING: TaskResultStatus.READY,
    Job.Status.RUNNING: TaskResultStatus.RUNNING,
    Job.Status.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    Job.Status.FAILED: TaskResultStatus.FAILED,
    Job.Status.CANCELLED: TaskResultStatus.FAILED,
}


def platform_priority(priority: int) -> int:
    """Django's -100..100 (0 by default) onto the platform's 0..9 (5 by default), order kept:
    0 -> 5; 1..25 -> 6, 26..50 -> 7, 51..75 -> 8, 76..100 -> 9; -1..-20 -> 4, ... -81..-100 -> 0."""
    if priority >= 0:
        return 5 + math.ceil(priority * 4 / 100)
    return 5 + math.floor(priority * 5 / 100)


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", text) if part)


def _call_signature(task) -> inspect.Signature:
    """The function's signature without the context argument of a task that takes one."""
    signature = inspect.signature(task.func)
    parameters = list(signature.parameters.values())
    return signature.replace(parameters=parameters[1:] if task.takes_context else parameters)


def _json_type(annotation) -> Any:
    """The annotation when pydantic can validate it and describe it as JSON Schema, else any value."""
    try:
        TypeAdapter(annotation).json_schema()
    except Exception:  # noqa: BLE001 - an annotation pydantic does not know: accept any JSON value
        return Any
    return annotation


def params_model_for(task) -> type[BaseModel]:
    """A model of the task function's parameters, so that the form, the API schema and validation all follow
    the signature: `a: int` is an integer field, an unannotated one any JSON value, `*args` a list."""
    signature = _call_signature(task)
    try:
        hints = typing.get_type_hints(task.func)
    except Exception:  # noqa: BLE001 - hints that do not resolve are no hints
        hints = {}
    fields = {}
    for parameter in signature.parameters.values():
        annotation = _json_type(hints.get(parameter.name, Any))
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            fields[parameter.name] = (list[annotation], [])
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            fields[parameter.name] = (dict[str, annotation], {})
        else:
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            fields[parameter.name] = (annotation, default)
    return create_model(f"{_camel(task.func.__name__)}Params", __module__=task.func.__module__,
                        __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)


def params_of(task, args, kwargs) -> dict:
    """The call's arguments by parameter name, as the Job stores them; TypeError as a call with them would."""
    bound = _call_signature(task).bind(*args, **kwargs)
    return dict(bound.arguments)


def call_arguments(task, params: dict) -> tuple[list, dict]:
    """(args, kwargs) to call the function with, from the arguments by name."""
    signature = _call_signature(task)
    bound = inspect.BoundArguments(signature, OrderedDict(
        (name, params[name]) for name in signature.parameters if name in params))
    return list(bound.args), dict(bound.kwargs)


def task_result(job: Job, task, *, backend: str) -> TaskResult:
    """The job as Django's TaskResult: its status, times, arguments, errors, workers and return value."""
    errors = list(job.errors.all())
    worker_ids = [e.worker for e in errors][:job.attempts]
    while len(worker_ids) < job.attempts:
        worker_ids.append(job.worker)
    args, kwargs = call_arguments(task, job.params)
    result = TaskResult(
        task=task, id=str(job.id), status=STATUS[job.status], enqueued_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, last_attempted_at=job.started_at,
        args=args, kwargs=kwargs, backend=backend, worker_ids=worker_ids,
        errors=[TaskError(exception_class_path=e.exception_class or "builtins.Exception",
                          traceback=e.traceback or e.error) for e in errors],
    )
    if job.status == Job.Status.SUCCEEDED:
        object.__setattr__(result, "_return_value", selectors.job_result_value(job=job))
    return result


class PlatformTaskBackend(BaseTaskBackend):
    """The platform as a backend of Django's task API: each task is a job kind, each enqueue a job."""

    supports_defer = True  # run_after is the job's run_at: held in the database, published when due
    supports_async_task = True  # a coroutine function runs to completion in the worker
    supports_get_result = True  # from any process: the Job table
    supports_priority = True  # -100..100 onto 0..9, see platform_priority

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self.max_attempts = int(self.options.get("MAX_ATTEMPTS", 3))

    # --- Tasks become kinds ------------------------------------------------------------

    def validate_task(self, task) -> None:
        """Django's rules, then the task's kind (and its Celery task) exist from here on."""
        super().validate_task(task)
        self.kind_for(task)

    def kind_for(self, task) -> JobKind:
        known = get_kind(task.module_path)
        if known is not None and known.task is not None and known.task.func is task.func:
            return known
        backend = self

        def run(ctx, params: BaseModel):
            return backend._run(task, ctx, params.model_dump(exclude_unset=True))

        doc = inspect.getdoc(task.func) or ""
        kind = register(JobKind(
            name=task.module_path, func=run, params_model=params_model_for(task),
            title=task.func.__name__.replace("_", " ").capitalize(), description=doc.split("\n\n")[0],
            queue=task.queue_name, priority=platform_priority(task.priority), max_attempts=self.max_attempts,
            task=task,
        ))
        register_kind_tasks()
        return kind

    # --- Enqueue and results ---------------------------------------------------------------

    def enqueue(self, task, args, kwargs) -> TaskResult:
        """A job of the task's kind, through the submit service: validated, admitted (QueueFull or
        BrokerUnavailable when back pressure refuses it, nothing written), recorded, published after commit."""
        self.validate_task(task)
        kind = self.kind_for(task)
        params = params_of(task, args, kwargs)
        try:
            kind.params_model.model_validate(params)
            params = normalize_json(params)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise TypeError(f"{task.module_path}: the arguments are not valid for the task: {problems}") from None
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{task.module_path}: the arguments are not JSON: {exc}") from None
        try:
            outcome = services.job_submit(user=None, kind=kind.name, params=params, queue=task.queue_name,
                                          priority=platform_priority(task.priority), run_at=task.run_after)
        except services.JobInputError as exc:
            raise TypeError(f"{task.module_path}: {exc}") from None
        result = task_result(outcome.job, task, backend=self.alias)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        job = selectors.job_by_id(job_id=result_id)
        kind = get_kind(job.kind) if job is not None else None
        if kind is None or kind.task is None:
            raise TaskResultDoesNotExist(result_id)
        return task_result(job, kind.task, backend=self.alias)

    # --- The run, in the worker ------------------------------------------------------------

    def _run(self, task, ctx, params: dict):
        """Call the function with the job's arguments (and its TaskContext), sending Django's signals."""
        job = selectors.job_by_id(job_id=ctx.job_id)
        running = task_result(job, task, backend=self.alias)
        task_started.send(type(self), task_result=running)
        args, kwargs = call_arguments(task, params)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=running), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            value = normalize_json(value)
        except BaseException as exc:
            object.__setattr__(running, "status", TaskResultStatus.FAILED)
            running.errors.append(TaskError(exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
                                            traceback=tb.format_exc()))
            task_finished.send(type(self), task_result=running)
            raise
        object.__setattr__(running, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(running, "_return_value", value)
        task_finished.send(type(self), task_result=running)
        return value

    # --- System checks ------------------------------------------------------------------

    def check(self, **kwargs):
        """A queue no worker of the platform serves would take tasks that never run."""
        yield from super().check(**kwargs)
        unknown = sorted(set(self.queues) - set(settings.JOBS_QUEUES))
        if unknown:
            yield checks.Error(
                f"TASKS[{self.alias!r}]['QUEUES'] names {unknown}, which are not platform queues",
                hint=f"Use queues of JOBS_QUEUES: {settings.JOBS_QUEUES}.", id="jobs.E001")
        if self.max_attempts < 1:
            yield checks.Error(f"TASKS[{self.alias!r}]['OPTIONS']['MAX_ATTEMPTS'] must be at least 1",
                               id="jobs.E002")

