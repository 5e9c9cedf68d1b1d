"""Bench-only URLs: the product's, plus the baselines they are measured against. Never in the product."""
import json

from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from jobs.registry import get_kind
from project.urls import urlpatterns as product_urlpatterns

from .bare_app import bare_noop


def constant(request):
    """The ceiling: what the server answers when the view does nothing."""
    return HttpResponse(b'{"ok": true}', content_type="application/json")


@csrf_exempt
def bare_delay(request):
    """A hand-wired submit endpoint: one `.delay()` and nothing recorded."""
    result = bare_noop.delay()
    return JsonResponse({"id": result.id}, status=202)


class _InlineContext:
    """What a kind's function needs when it runs in the request: no job row, no progress writes."""

    job_id = "inline"
    attempt = 1

    def progress(self, done, total, message=""):
        pass

    def check_cancelled(self):
        pass


@csrf_exempt
def inline_kind(request):
    """The expensive kind run in the request, as a site without a queue would: the user waits for it all."""
    body = json.loads(request.body)
    kind = get_kind(body["kind"])
    params = kind.params_model.model_validate(body.get("params", {}))
    return JsonResponse({"result": kind.func(_InlineContext(), params)})


urlpatterns = [
    path("bench/constant", constant),
    path("bench/delay", bare_delay),
    path("bench/inline", inline_kind),
    *product_urlpatterns,
]
