"""What the services raise for a caller to answer: bad input, a wrong state, a full queue, no broker."""
from __future__ import annotations

from ..infra.broker import BrokerUnavailable

__all__ = ["BrokerUnavailable", "IdempotencyConflict", "JobInputError", "JobStateError", "NotFound", "NotPermitted",
           "QueueFull", "ScheduleNameTaken", "BROKER_RETRY_AFTER"]

# Seconds a client is told to wait when the broker does not answer.
BROKER_RETRY_AFTER = 5


class JobInputError(Exception):
    """The submission is invalid; `errors` names each bad field as {loc, msg, type}."""

    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


class JobStateError(Exception):
    """The job is not in a state that allows the action."""


class NotFound(Exception):
    """What an action names does not exist for this user: a queue, or an owner whose jobs they may not see."""


class IdempotencyConflict(Exception):
    """The idempotency key names a job submitted with another kind or other parameters: `mismatch` says which."""

    def __init__(self, *, job_id, mismatch: list[str]):
        super().__init__(f"idempotency key already used for job {job_id} with other {' and '.join(mismatch)}")
        self.job_id, self.mismatch = job_id, mismatch


class QueueFull(Exception):
    """Back pressure refused a submission: `queue` is at its limit (or "*", all queues together)."""

    def __init__(self, *, queue: str, depth: int, limit: int, retry_after: int):
        super().__init__(f"queue {queue} is full: depth {depth}, limit {limit}; retry after {retry_after}s")
        self.queue, self.depth, self.limit, self.retry_after = queue, depth, limit, retry_after


class NotPermitted(Exception):
    """The user may see the object but not do this to it (another user's schedule, without the permission)."""


class ScheduleNameTaken(Exception):
    """A schedule of that name exists already (names are unique, and runs are recorded under them)."""
