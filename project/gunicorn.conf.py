"""Gunicorn hooks for the web process: prometheus-client's multiprocess bookkeeping (see jobs/infra/metrics.py),
and the submission counts a worker still holds when it exits (see jobs/services/admission.py)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Gunicorn's combined format, and how long the worker took to answer (microseconds).
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" rt_us=%(D)s'


def on_starting(server):
    """In the arbiter, before any worker forks: fold the metrics files that exited processes left."""
    from jobs.infra import metrics

    metrics.on_server_start()


def child_exit(server, worker):
    """A worker process is gone: drop what prometheus-client keeps only for live processes."""
    from jobs.infra import metrics

    metrics.on_process_exit(worker.pid)


def worker_exit(server, worker):
    """In a worker that is exiting: send the submission counts it has not sent yet."""
    from jobs.services import admission

    admission.stop()


# No control socket: its default path ($XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl) is one per user,
# shared by every gunicorn that user runs (a second checkout, a test, a benchmark), and the platform uses no
# gunicornc command.
control_socket_disable = True
