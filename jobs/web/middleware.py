"""HTTP faces of the platform's refusals: a body too large (413), a full queue or no broker (503 with
Retry-After), and a database that is down (503, not 500)."""
import logging

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string

from ..infra.db import is_database_down
from ..services import BrokerUnavailable, QueueFull
from ..services.errors import BROKER_RETRY_AFTER

logger = logging.getLogger(__name__)


def _is_api(request) -> bool:
    return request.path_info.startswith("/api/")


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
            if _is_api(request):
                return JsonResponse({"error": "body_too_large", "detail": message}, status=413)
            return HttpResponse(message, status=413, content_type="text/plain")
        return self.get_response(request)


class ApiJsonErrorsMiddleware:
    """The API answers in JSON only: a 405 (a method the path does not take) gets a JSON body naming
    the methods it does take, as every other API error does; its Allow header stays."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code == 405 and _is_api(request):
            allowed = response.get("Allow", "")
            json_response = JsonResponse({"error": "method_not_allowed",
                                          "detail": f"{request.method} is not allowed here; allowed: {allowed}"},
                                         status=405)
            json_response["Allow"] = allowed
            return json_response
        return response


# --- Back pressure -------------------------------------------------------------------


def refusal_body(exc: QueueFull | BrokerUnavailable) -> dict:
    if isinstance(exc, QueueFull):
        return {"error": "queue_full", "queue": exc.queue, "depth": exc.depth, "limit": exc.limit,
                "retry_after": exc.retry_after}
    return {"error": "broker_unavailable", "detail": "the message broker is not answering",
            "retry_after": BROKER_RETRY_AFTER}


def refusal_response(request, exc: QueueFull | BrokerUnavailable) -> HttpResponse:
    """503 with Retry-After: JSON for the API, a page with the user's menu for the browser."""
    body = refusal_body(exc)
    if isinstance(exc, BrokerUnavailable):
        logger.warning("refused: broker unavailable path=%s (%s)", request.path_info, exc)
    if _is_api(request):
        response = JsonResponse(body, status=503)
    else:
        response = HttpResponse(render_to_string("503.html", {"refusal": body}, request=request), status=503)
    response["Retry-After"] = str(body["retry_after"])
    request.jobs_refused = True  # see jobs.web.log_filters.NoRefusalLogs
    return response


class BackPressureMiddleware:
    """Answers a submission that the admission service refused (QueueFull, BrokerUnavailable) with 503.

    The gate itself is the admission service, which job_submit asks before it writes anything;
    the API's own handler (jobs.web.api) gives the same answer.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, (QueueFull, BrokerUnavailable)):
            return refusal_response(request, exception)
        return None


# --- The database --------------------------------------------------------------------

DATABASE_RETRY_AFTER = 5
DATABASE_DOWN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Temporarily unavailable</title></head>
<body><h1>Temporarily unavailable</h1>
<p>The database is not answering, so nothing was read or saved. Please try again in a few seconds.</p>
</body></html>
"""


def database_unavailable_response(request, exception: Exception) -> HttpResponse:
    """503 with Retry-After: JSON for the API, a page for the browser that needs no database to render."""
    logger.warning("database unavailable path=%s error=%r", request.path_info, str(exception)[:200])
    if _is_api(request):
        response = JsonResponse({"error": "database_unavailable", "detail": "the database is not answering",
                                 "retry_after": DATABASE_RETRY_AFTER}, status=503)
    else:
        response = HttpResponse(DATABASE_DOWN_PAGE, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


class DatabaseUnavailableMiddleware:
    """Answers 503, not 500, when a view fails because the database is down, restarting or locked.

    Only connection-level errors count (jobs.infra.db.is_database_down); an error from a bad
    query is still a 500. The API's own handler (jobs.web.api) gives the same answer.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        return database_unavailable_response(request, exception) if is_database_down(exception) else None
