"""Flower as the Procfile starts it (`python -m project.flower [flower options]`): Celery's `flower` command
for this project's app, with two changes.

- Flower's list of workers (`/api/workers`, a worker's page, the queues of its broker page) is what the
  workers answered to an inspect broadcast, sent once when Flower starts and after that only on
  `?refresh=1`. A worker that starts after Flower (the usual order under `make run`) or restarts was
  missing from it until then. Here a worker that the event stream shows alive (its worker-online event,
  its heartbeats) and that has not answered an inspect yet, or answered under another pid, is inspected
  at once, and again every few seconds until it answers.
- The broker page and `/api/queues/length` list every declared queue (CELERY_TASK_QUEUES) beside those
  a worker consumes, so that a queue nobody consumes, and its depth, still show.
"""
from __future__ import annotations

import sys
import time

from flower import command
from flower.app import Flower
from flower.views import BaseHandler
from tornado.ioloop import PeriodicCallback


class PlatformFlower(Flower):
    """Flower that inspects each worker it learns of from the event stream."""

    check_interval_ms = 500
    retry_seconds = 3.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._asked: dict[str, tuple[int | None, float]] = {}  # worker -> (pid, when) of the last inspect for it
        self._new_workers = PeriodicCallback(self.inspect_new_workers, self.check_interval_ms)

    def start(self):
        self._new_workers.start()
        super().start()

    def stop(self):
        self._new_workers.stop()
        super().stop()

    def inspect_new_workers(self) -> None:
        """Inspect (one broadcast for all) when an alive worker is missing from the inspected ones."""
        now = time.monotonic()
        due = []
        for name, worker in list(self.events.state.workers.items()):
            if not worker.alive or self._answered(name, worker.pid):
                continue
            pid, asked_at = self._asked.get(name, (None, float("-inf")))
            if pid != worker.pid or now - asked_at >= self.retry_seconds:
                due.append(name)
        if due:
            for name in due:
                self._asked[name] = (self.events.state.workers[name].pid, now)
            self.update_workers()

    def _answered(self, name: str, pid: int | None) -> bool:
        info = self.workers.get(name, {})
        return "active_queues" in info and info.get("stats", {}).get("pid") == pid


_consumed_queue_names = BaseHandler.get_active_queue_names


def declared_and_consumed_queue_names(handler: BaseHandler) -> list[str]:
    conf = handler.capp.conf
    declared = {conf.task_default_queue} | {q.name for q in conf.task_queues or [] if q.name}
    return sorted(declared | set(_consumed_queue_names(handler)))


def main() -> None:
    command.Flower = PlatformFlower
    BaseHandler.get_active_queue_names = declared_and_consumed_queue_names
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "project", "flower", *sys.argv[1:]]
    sys.exit(celery_main())


if __name__ == "__main__":
    main()
