"""kombu's Amazon SQS transport, as the platform's workers use it (CELERY_BROKER_TRANSPORT when the broker is SQS)."""
from __future__ import annotations

import logging

from kombu.transport import SQS

logger = logging.getLogger(__name__)


class Channel(SQS.Channel):
    """kombu 5.7's SQS channel, living through a receive that failed.

    kombu's asynchronous client answers a ReceiveMessage that timed out or failed on SQS's side (HTTP 408,
    500, 502, 503, 504, or 599: the endpoint not reached) with an empty list instead of a response, and the
    channel then raises AttributeError ('list' object has no attribute 'get') in the worker's event loop: the
    worker exits ("Unrecoverable error"). Here such a receive counts as an empty one, and the queue is polled
    again after the transport's polling interval. Shown by tests/faults/test_sqs_outage.py, which cuts the
    worker off from the SQS emulator.
    """

    def _on_messages_ready(self, queue, qname, messages):
        if not isinstance(messages, dict):
            logger.warning("sqs receive failed queue=%s; polling again", qname)
            return 0
        return super()._on_messages_ready(queue, qname, messages)


class Transport(SQS.Transport):
    Channel = Channel
