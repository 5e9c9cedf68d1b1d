"""The one "database down" predicate: a connection-level failure, as opposed to a bug in a query."""
from django.db import InterfaceError, OperationalError

# SQLite reports mistakes in a query as OperationalError too: those are bugs, not outages.
NOT_AN_OUTAGE = ("no such table", "no such column", "syntax error")


def is_database_down(exception: BaseException) -> bool:
    """The database is down, restarting, failing over or locked (SQLite's busy timeout)."""
    if isinstance(exception, InterfaceError):
        return True
    return isinstance(exception, OperationalError) and not str(exception).startswith(NOT_AN_OUTAGE)
