"""Celery's remote control of the workers: which queues each one consumes (a broadcast through the broker)."""
from __future__ import annotations

import logging

from celery import current_app

from .broker import broker_kind

logger = logging.getLogger(__name__)


def supported() -> bool:
    """SQS has no broadcast, so Celery's workers take no remote control there."""
    return broker_kind() != "sqs"


def cancel_consumer(queue: str, *, destination: list[str] | None = None) -> bool:
    """Ask the workers (`destination`: these only) to stop taking messages of `queue`; those running finish.

    Fire and forget: no reply is awaited. False when it could not be sent (logged): the workers' heartbeats
    settle it within a beat."""
    return _broadcast("cancel_consumer", queue, destination)


def add_consumer(queue: str, *, destination: list[str]) -> bool:
    """Ask the named workers to take messages of `queue` again (as cancel_consumer, fire and forget)."""
    return _broadcast("add_consumer", queue, destination) if destination else True


def _broadcast(command: str, queue: str, destination: list[str] | None) -> bool:
    if not supported():
        return False
    try:
        with current_app.connection_for_write() as conn:
            # Celery would wait for the broker as long as it takes (its connection retries are unbounded here).
            conn.ensure_connection(max_retries=1, timeout=2)
            current_app.control.broadcast(command, arguments={"queue": queue}, destination=destination,
                                          reply=False, connection=conn)
    except Exception as exc:  # noqa: BLE001 - the database holds the state; heartbeats reconcile
        logger.warning("could not send %s queue=%s to the workers error=%r", command, queue, exc)
        return False
    return True
