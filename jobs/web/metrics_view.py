"""GET /metrics: the Prometheus exposition of this host's processes plus the queues, for staff."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .. import selectors, services
from ..infra import metrics
from ..infra.metrics import HostFilesCollector


class QueuesCollector:
    """Read at scrape time: queue depths and limits from the broker, the workers from their heartbeats."""

    def collect(self):
        overview = selectors.queue_overview()
        snap = overview.snapshot
        up = GaugeMetricFamily("jobs_broker_up", "1 when the broker answered the depth check.")
        up.add_metric([], 0 if snap is None else 1)
        yield up
        if snap is not None:
            depth = GaugeMetricFamily("jobs_queue_depth", "Messages waiting in each queue.", labels=["queue"])
            limit = GaugeMetricFamily("jobs_queue_limit", "Depth at which a queue refuses submissions.",
                                      labels=["queue"])
            accepting = GaugeMetricFamily("jobs_queue_accepting", "1 while a queue accepts submissions.",
                                          labels=["queue"])
            for name, state in snap.queues.items():
                depth.add_metric([name], state.depth)
                limit.add_metric([name], state.limit)
                accepting.add_metric([name], 0 if state.closed or snap.total_closed else 1)
            total_limit = GaugeMetricFamily("jobs_queues_limit", "Limit on the depth of all queues together.")
            total_limit.add_metric([], snap.total_limit)
            drain = GaugeMetricFamily("jobs_drain_rate", "Jobs claimed per second over the last 10 seconds.")
            drain.add_metric([], snap.drain_rate)
            yield from (depth, limit, accepting, total_limit, drain)
        paused = GaugeMetricFamily("jobs_queue_paused", "1 while a queue is paused: workers take none of its jobs.",
                                   labels=["queue"])
        for name in settings.JOBS_QUEUES:
            paused.add_metric([name], 1 if name in overview.paused else 0)
        yield paused
        workers = GaugeMetricFamily("jobs_workers_online", "Celery workers whose heartbeat came within the lease.")
        workers.add_metric([], len(overview.workers))
        consumers = GaugeMetricFamily("jobs_queue_workers", "Online workers consuming each queue.", labels=["queue"])
        per_queue = overview.workers_per_queue()
        for name in [*settings.JOBS_QUEUES, settings.JOBS_PLATFORM_QUEUE]:
            consumers.add_metric([name], per_queue.get(name, 0))
        running = GaugeMetricFamily("jobs_worker_running", "Tasks each online worker was running at its last "
                                    "heartbeat.", labels=["worker"])
        for worker in overview.workers:
            running.add_metric([worker.name], worker.running)
        yield from (workers, consumers, running)


def _staff_user(request: HttpRequest):
    """The staff user behind a session or a bearer token; None when there is no user, False when not staff."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        user = services.api_token_user(plain=token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if user is None:
        return None
    return user if user.is_active and user.is_staff else False


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Staff only (session or bearer token)."""
    user = _staff_user(request)
    if user is None:
        response = JsonResponse({"detail": "log in as staff, or send a staff user's bearer token"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if user is False:
        return JsonResponse({"detail": "metrics are for staff only"}, status=403)
    metrics.declare_refusals()  # in this process's file, so that the series exist before any refusal
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostFilesCollector())
    registry.register(QueuesCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
