"""The baseline: hand-wired Celery, a no-op task on an app of its own, results stored by django-celery-results.

Celery's defaults, except what changes a guarantee or what is watched, which are set as the
platform sets them: late acknowledgement, requeue on a lost worker, one message prefetched,
JSON only, extended results. Like the platform, it leaves task-sent events at Celery's
default (off). Same broker (CELERY_BROKER_URL) and database (DATABASE_URL) as the
platform; its worker runs the Procfile's worker line with `-A bench.bare_app`.
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

BARE_TASK_NAME = "bench.bare_noop"
BARE_QUEUE = "bare"

# Not the current app and its task not shared: the platform's processes that import this module
# (the bench URLconf) keep publishing through the platform's app.
app = Celery("bare", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL") or os.environ["REDIS_URL"],
    result_backend="django-db",
    result_extended=True,  # the task's name, arguments and worker with each result, as the platform stores
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=BARE_QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name=BARE_TASK_NAME, shared=False)
def bare_noop():
    return None
