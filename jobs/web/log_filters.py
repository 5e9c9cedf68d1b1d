"""Logging filters, importable while Django configures logging (before any app is loaded)."""


class NoRefusalLogs:
    """A logging filter for django.request: a full queue is the gate at work, not a server error.

    Without it Django logs every refusal at ERROR ("Service Unavailable"), thousands of lines a
    minute under overload, written while the refusal is answered. Refusals are counted instead
    (metrics, GET /api/queue); the gate logs its closing and opening, and a broker that does not
    answer is logged as a warning.
    """

    def filter(self, record) -> bool:
        return not getattr(getattr(record, "request", None), "jobs_refused", False)
