"""GET /healthz: is the database answering, is the broker answering (and which broker it is)."""
from django.db import connection
from django.http import JsonResponse

from .. import selectors


def healthz(request):
    checks = {"database": "ok", "broker": "ok"}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means the database is not answering
        checks["database"] = f"down: {exc.__class__.__name__}"
    overview = selectors.queue_overview(max_age=0, workers=False)
    if overview.snapshot is None:
        checks["broker"] = f"down: {overview.broker_error}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse({**checks, "broker_kind": overview.broker}, status=200 if healthy else 503)
