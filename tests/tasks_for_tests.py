"""Plain Django tasks, written as any Django project writes them: nothing here knows the platform."""
import asyncio
from pathlib import Path

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the backport
    from django_tasks import task


class Refused(Exception):
    """What `fail` raises."""


@task
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@task()
def greet(name, punctuation="!"):
    return f"Hello, {name}{punctuation}"


@task(takes_context=True)
def attempt_of(context, marker: str) -> dict:
    """Die with the worker on the first attempt (the marker file says it was tried), succeed on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        import os
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": context.attempt, "id": context.task_result.id}


@task(priority=50, queue_name="cpu")
def fail(reason: str) -> None:
    raise Refused(reason)


@task
async def wait_and_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@task
def sum_all(*numbers: float, scale: float = 1.0, **labels: str) -> dict:
    return {"sum": sum(numbers) * scale, "labels": labels}


def _log_signal(name):
    """Workers started with TASK_SIGNALS_LOG append each task signal they send to that file."""
    import os

    def receiver(sender, task_result, **kwargs):
        path = os.environ.get("TASK_SIGNALS_LOG")
        if path:
            with open(path, "a") as log:
                log.write(f"{name} {task_result.id} {task_result.status}\n")
    return receiver


try:
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:
    from django_tasks.signals import task_enqueued, task_finished, task_started

for _signal, _name in ((task_enqueued, "enqueued"), (task_started, "started"), (task_finished, "finished")):
    _signal.connect(_log_signal(_name), weak=False, dispatch_uid=f"tests-task-signal-{_name}")
