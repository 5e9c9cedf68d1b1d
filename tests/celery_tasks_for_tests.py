"""Plain Celery tasks, as a project that used Celery before the platform has them: no platform import."""
from pathlib import Path

from celery import shared_task


@shared_task
def divide(a, b):
    return a / b


@shared_task
def needs_file(path):
    """Fails until the file exists: run it again once it does."""
    return Path(path).read_text()


@shared_task(bind=True, max_retries=3)
def retries_until_file(self, path):
    if not Path(path).exists():
        Path(path).write_text("made by the first try")
        raise self.retry(countdown=0.5, exc=FileNotFoundError(path))
    return "found on try %d" % (self.request.retries + 1)
