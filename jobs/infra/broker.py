"""The message broker through Celery and kombu: publish by task name, revoke, queue depths, waiting messages,
and the result backend's encoding."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded  # noqa: F401 - raised in a run at its soft limit; runs catch it
from django.conf import settings
from django.utils import timezone

from .redis import REDIS_DOWN, broker_client, broker_is_platform_redis, broker_is_redis, client


class BrokerUnavailable(Exception):
    """The broker did not answer."""


def publish(*, task_name: str, args: tuple, task_id: str, queue: str, priority: int, headers: dict) -> None:
    """Send one task message by name: the publisher needs no task object, only the name workers know."""
    current_app.send_task(task_name, args=args, task_id=task_id, queue=queue, priority=priority, headers=headers)


def answers() -> bool:
    """Whether the broker answers now (a round trip of 0.5 s at most on Redis, about a second on RabbitMQ)."""
    try:
        if broker_is_redis():
            return bool(broker_client().ping())
        amqp_depths([])
        return True
    except (BrokerUnavailable, *REDIS_DOWN):
        return False


def revoke(task_id: str) -> None:
    """Ask the worker running `task_id` to stop it (SIGTERM to its pool process)."""
    current_app.control.revoke(task_id, terminate=True, signal="SIGTERM")


def broker_list_names(queue: str) -> list[str]:
    """The Redis lists kombu keeps for one queue: one per priority step."""
    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("sep", ":")
    return [f"{queue}{sep}{p}" if p else queue for p in settings.JOBS_PRIORITY_STEPS]


def read_depths(queues: list[str], *, keys: list[str]) -> tuple[dict[str, int], list]:
    """Messages waiting per queue, and the values of `keys` in the platform's Redis.

    One round trip when the broker is the platform's Redis (the depth check is on every
    submission's path); raises BrokerUnavailable when either does not answer.
    """
    try:
        if not broker_is_redis():
            return amqp_depths(queues), client().mget(keys) if keys else []
        same = broker_is_platform_redis()
        pipe = broker_client().pipeline(transaction=False)
        for q in queues:
            for name in broker_list_names(q):
                pipe.llen(name)
        if same and keys:
            pipe.mget(keys)
        replies = pipe.execute()
        n = len(settings.JOBS_PRIORITY_STEPS)
        depths = {q: sum(replies[i * n:(i + 1) * n]) for i, q in enumerate(queues)}
        values = (replies[-1] if same else client().mget(keys)) if keys else []
        return depths, values
    except REDIS_DOWN as exc:
        raise BrokerUnavailable(str(exc)) from exc


def amqp_depths(queues: list[str]) -> dict[str, int]:
    """Ready messages per queue on RabbitMQ, from a passive declare (which does not create the queue)."""
    depths = {}
    try:
        with current_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=1)
            channel = conn.default_channel
            for q in queues:
                try:
                    depths[q] = channel.queue_declare(queue=q, passive=True).message_count
                except Exception as exc:  # noqa: BLE001 - a queue nobody declared yet holds nothing
                    if "NOT_FOUND" not in str(exc):
                        raise
                    depths[q] = 0
                    channel = conn.channel()
    except Exception as exc:  # noqa: BLE001 - any connection failure means the broker is not answering
        raise BrokerUnavailable(str(exc)) from exc
    return depths


def ready_message_ids(queues: list[str]) -> set[str] | None:
    """Ids of the task messages waiting in `queues` (not those delivered to a worker and unacknowledged).

    None when the broker cannot be read this way (RabbitMQ): the caller must then assume a
    message may be missing.
    """
    if not broker_is_redis():
        return None
    pipe = broker_client().pipeline(transaction=False)
    for q in queues:
        for name in broker_list_names(q):
            pipe.lrange(name, 0, -1)
    ids = {_message_id(raw) for reply in pipe.execute() for raw in reply}
    ids.discard(None)
    return ids


def broker_started_at() -> datetime | None:
    """When the broker (Redis) last started, from its uptime; None when it cannot be told (RabbitMQ).

    A Redis that restarted without persistence holds no message published before then.
    """
    if not broker_is_redis():
        return None
    uptime = broker_client().info("server").get("uptime_in_seconds")
    return None if uptime is None else timezone.now() - timedelta(seconds=int(uptime))


def _message_id(raw) -> str | None:
    try:
        return json.loads(raw).get("headers", {}).get("id")
    except (ValueError, AttributeError):
        return None


def encode_result(value) -> tuple[str, str, str]:
    """(content_type, content_encoding, text) as the result backend stores a value."""
    return current_app.backend.encode_content(value)


def decode_result(task_result) -> object:
    """The value a TaskResult row holds."""
    return current_app.backend.decode_content(task_result, task_result.result)
