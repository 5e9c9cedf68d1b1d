"""The message broker through Celery and kombu (Redis, RabbitMQ or Amazon SQS): publish by task name, revoke,
queue depths, waiting messages, and the result backend's encoding."""
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


_KINDS = {"redis": "redis", "rediss": "redis", "redis+socket": "redis", "amqp": "rabbitmq", "amqps": "rabbitmq",
          "pyamqp": "rabbitmq", "sqs": "sqs"}


def broker_kind() -> str:
    """Which broker CELERY_BROKER_URL names: "redis", "rabbitmq" or "sqs" (another transport: its URL scheme)."""
    scheme = settings.CELERY_BROKER_URL.partition("://")[0]
    return _KINDS.get(scheme, scheme)


def publish(*, task_name: str, args: tuple, task_id: str, queue: str, priority: int, headers: dict) -> None:
    """Send one task message by name: the publisher needs no task object, only the name workers know."""
    current_app.send_task(task_name, args=args, task_id=task_id, queue=queue, priority=priority, headers=headers)


def answers() -> bool:
    """Whether the broker answers now (a round trip of 0.5 s at most on Redis, about a second on RabbitMQ, one
    request on SQS)."""
    try:
        if broker_is_redis():
            return bool(broker_client().ping())
        if broker_kind() == "sqs":
            sqs_depths([settings.CELERY_TASK_DEFAULT_QUEUE])
        else:
            amqp_depths([])
        return True
    except (BrokerUnavailable, *REDIS_DOWN):
        return False


def revoke(task_id: str, *, terminate: bool = True) -> None:
    """Ask the workers to skip `task_id` and (`terminate`) the one running it to stop it (SIGTERM to its pool
    process). SQS has no broadcast, so Celery's workers have no remote control there: nothing is sent, and a
    platform job's run stops at its next check."""
    if broker_kind() == "sqs":
        return
    current_app.control.revoke(task_id, terminate=terminate, signal="SIGTERM")


def send_by_name(*, task_name: str, args: list, kwargs: dict, task_id: str, queue: str) -> None:
    """Send a plain Celery task again, as its own code would have (no platform headers, no priority)."""
    current_app.send_task(task_name, args=args, kwargs=kwargs, task_id=task_id, queue=queue)


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
            depths = sqs_depths(queues) if broker_kind() == "sqs" else amqp_depths(queues)
            return depths, client().mget(keys) if keys else []
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


# What a queue's depth is on SQS: messages a worker may receive now, and those sent with a delay.
SQS_WAITING = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed")


def sqs_depths(queues: list[str]) -> dict[str, int]:
    """Messages waiting per queue on SQS, from one GetQueueAttributes each (SQS_WAITING); a queue not created yet
    holds none.

    Not those in flight (received, not yet deleted): they are held by workers (running, prefetched, waiting out
    a retry's countdown), as Redis's unacknowledged and RabbitMQ's unacked messages are, which their depths do
    not count either. SQS's counts are approximate: eventually consistent, they may lag the sends and
    receives of the last minute. Through the app's connection pool, so that each process makes its boto3
    client once (the queue URLs are kept with it).
    """
    from kombu.transport.SQS.exceptions import DoesNotExistQueueException

    depths = {}
    try:
        with current_app.pool.acquire(block=True, timeout=5) as conn:
            conn.ensure_connection(max_retries=0)  # not kombu's retries for seconds: botocore's are enough
            channel = conn.default_channel
            for q in queues:
                # kombu's own name mapping and URL cache, so that the queue read is the queue kombu sends to.
                name = channel.canonical_queue_name(q)
                try:
                    url = channel._resolve_queue_url(q)
                except DoesNotExistQueueException:
                    depths[q] = 0
                    continue
                try:
                    attributes = channel.sqs(queue=name).get_queue_attributes(
                        QueueUrl=url, AttributeNames=list(SQS_WAITING))["Attributes"]
                except Exception as exc:  # noqa: BLE001 - deleted since its URL was kept: it holds nothing
                    if "NonExistentQueue" not in str(exc) and "QueueDoesNotExist" not in str(exc):
                        raise
                    channel._queue_cache.pop(name, None)
                    depths[q] = 0
                    continue
                depths[q] = sum(int(attributes.get(a, 0)) for a in SQS_WAITING)
    except Exception as exc:  # noqa: BLE001 - any failure means the broker is not answering
        raise BrokerUnavailable(str(exc)) from exc
    return depths


def ready_message_ids(queues: list[str]) -> set[str] | None:
    """Ids of the task messages waiting in `queues` (not those delivered to a worker and unacknowledged).

    None when the broker cannot be read this way (RabbitMQ, SQS): the caller must then assume a
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
    """When the broker (Redis) last started, from its uptime; None when it cannot be told (RabbitMQ, SQS).

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
