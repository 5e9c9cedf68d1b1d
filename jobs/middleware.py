"""Request-size limit: a body over JOBS_MAX_BODY_BYTES is refused with 413 before anything reads it."""
from django.conf import settings
from django.http import HttpResponse, JsonResponse


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
