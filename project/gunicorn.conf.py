"""Gunicorn hooks for the web process: prometheus-client's multiprocess bookkeeping (see jobs/metrics.py),
and the submission counts a worker still holds when it exits (see jobs/backpressure.py)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def on_starting(server):
    """In the arbiter, before any worker forks: fold the metrics files that exited processes left."""
    from jobs import metrics

    metrics.on_server_start()


def child_exit(server, worker):
    """A worker process is gone: drop what prometheus-client keeps only for live processes."""
    from jobs import metrics

    metrics.on_process_exit(worker.pid)


def worker_exit(server, worker):
    """In a worker that is exiting: send the submission counts it has not sent yet."""
    from jobs.backpressure import gauge

    gauge.flush_counts()
