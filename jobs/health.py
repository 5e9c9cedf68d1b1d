"""GET /healthz: is the database answering, is the broker answering."""
from django.db import connection
from django.http import JsonResponse

from .backpressure import BrokerUnavailable, gauge


def healthz(request):
    checks = {"database": "ok", "broker": "ok"}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means the database is not answering
        checks["database"] = f"down: {exc.__class__.__name__}"
    try:
        gauge.snapshot(max_age=0)
    except BrokerUnavailable as exc:
        checks["broker"] = f"down: {exc}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(checks, status=200 if healthy else 503)
