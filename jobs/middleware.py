"""Request-size limit (413 before anything reads the body), and 503 instead of 500 while the database is down."""
import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

logger = logging.getLogger(__name__)


class BodySizeLimitMiddleware:
    """Answers 413 naming the limit, instead of Django's generic 400, for declared oversized bodies."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.JOBS_MAX_BODY_BYTES
        if length > limit:
            message = f"request body is {length} bytes; the limit is {limit} bytes"
            if request.path_info.startswith("/api/"):
                return JsonResponse({"error": "body_too_large", "detail": message}, status=413)
            return HttpResponse(message, status=413, content_type="text/plain")
        return self.get_response(request)


DATABASE_RETRY_AFTER = 5
DATABASE_DOWN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Temporarily unavailable</title></head>
<body><h1>Temporarily unavailable</h1>
<p>The database is not answering, so nothing was read or saved. Please try again in a few seconds.</p>
</body></html>
"""


# SQLite reports mistakes in a query as OperationalError too: those are bugs (500), not outages.
NOT_AN_OUTAGE = ("no such table", "no such column", "syntax error")


def is_database_down(exception: Exception) -> bool:
    """A connection-level failure: the database is down, restarting, failing over or locked."""
    if isinstance(exception, InterfaceError):
        return True
    return isinstance(exception, OperationalError) and not str(exception).startswith(NOT_AN_OUTAGE)


def database_unavailable_response(request, exception: Exception) -> HttpResponse:
    """503 with Retry-After: JSON for the API, a page for the browser that needs no database to render."""
    logger.warning("database unavailable path=%s error=%r", request.path_info, str(exception)[:200])
    if request.path_info.startswith("/api/"):
        response = JsonResponse({"error": "database_unavailable", "detail": "the database is not answering",
                                 "retry_after": DATABASE_RETRY_AFTER}, status=503)
    else:
        response = HttpResponse(DATABASE_DOWN_PAGE, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


class DatabaseUnavailableMiddleware:
    """Answers 503, not 500, when a view fails because the database is down, restarting or locked.

    Only connection-level errors count (is_database_down); an error from a bad query is still
    a 500. The API's own handler (jobs.api) gives the same answer.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        return database_unavailable_response(request, exception) if is_database_down(exception) else None
