"""The dashboard (HTML): thin views over selectors and services; htmx requests get the page's live part only."""
from __future__ import annotations

import uuid
from functools import wraps
from urllib.parse import quote, urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.humanize.templatetags.humanize import intcomma, naturaltime
from django.contrib.auth.decorators import login_required as auth_login_required
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from .. import selectors, services
from ..models import Job
from ..registry import all_kinds, get_kind
from . import charts, forms
from .presenters import duration, present, raw_json

STATUS_ORDER = [Job.Status.QUEUED, Job.Status.RUNNING, Job.Status.RETRYING, Job.Status.SUCCEEDED,
                Job.Status.FAILED, Job.Status.CANCELLED]


def login_required(view):
    """Django's login_required, except that a live part polled after the session ended sends the
    whole page to the login form instead of swapping the form into the part."""
    guarded = auth_login_required(view)

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.htmx and not request.user.is_authenticated:
            back = request.htmx.current_url_abs_path or "/"
            return HttpResponseClientRedirect(f"{resolve_url(settings.LOGIN_URL)}?next={quote(back)}")
        return guarded(request, *args, **kwargs)

    return wrapper


def _not_found(request, what: str = "job"):
    return render(request, "jobs/not_found.html", {"what": what}, status=404)


def _wants_part(request, target: str) -> bool:
    return bool(request.htmx) and request.htmx.target == target


# --- Jobs -----------------------------------------------------------------------------


_URL_PLACEHOLDER = uuid.UUID(int=0)


def _list_url(**query) -> str:
    query = {k: v for k, v in query.items() if v}
    return reverse("jobs:list") + (f"?{urlencode(query)}" if query else "")


@login_required
@require_GET
def job_list(request):
    status = request.GET.get("status") or None
    if status not in Job.Status.values:
        status = None
    # A kind, or a tracked Celery task's name (not a kind: any name a Job row may hold).
    kind = (request.GET.get("kind") or "")[:200] or None
    search = request.GET.get("q", "").strip()[:64]
    param = request.GET.get("param", "").strip()[:200]
    error = request.GET.get("error", "").strip()[:200]
    filters = {"kind": kind, "q": search, "param": param, "error": error}
    page = selectors.job_page(user=request.user, status=status, kind=kind, id_prefix=search or None,
                              param=param or None, error=error or None,
                              older_than=request.GET.get("older"), newer_than=request.GET.get("newer"))
    counts = selectors.job_status_counts_capped(user=request.user)
    # What each row shows is prepared here, once: per-row url reversing and date formatting in
    # the template cost more than the database on a page of 50.
    titles = {k.name: k.title for k in all_kinds()}
    detail_url = reverse("jobs:detail", args=[_URL_PLACEHOLDER])
    for job in page.jobs:
        job.kind_title = titles.get(job.kind, job.kind)
        job.id_text = str(job.id)
        job.url = detail_url.replace(str(_URL_PLACEHOLDER), job.id_text)
        job.short_id = job.id_text[:8]
        job.percent = str(job.progress_percent)
        job.attempts_text = f"{job.attempts}/{job.attempt_limit}"
        job.age = naturaltime(job.created_at)
        job.created_iso = job.created_at.isoformat()
        job.created_text = job.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        job.show_progress = job.status in (Job.Status.RUNNING, Job.Status.RETRYING) or bool(job.progress_total)
    is_first_page = not request.GET.get("older") and not request.GET.get("newer")
    cap = selectors.STATUS_COUNT_CAP
    context = {
        "page": page,
        "status": status,
        "kind": kind,
        "search": search,
        "param": param,
        "error": error,
        "search_too_short": bool(search) and len(search.replace("-", "")) < selectors.SEARCH_MIN_DIGITS,
        "search_min": selectors.SEARCH_MIN_DIGITS,
        "searched_to": page.searched_to,
        "search_scan_rows": intcomma(selectors.SEARCH_SCAN_ROWS),
        "kinds": all_kinds(),
        "status_tabs": [{"status": None, "label": "All", "count": None, "url": _list_url(**filters),
                         "current": status is None}] + [
            {"status": s, "label": s.label, "count": f"{intcomma(cap)}+" if counts[s] > cap else intcomma(counts[s]),
             "url": _list_url(status=s, **filters), "current": status == s}
            for s in STATUS_ORDER
        ],
        "older_url": _list_url(status=status, **filters, older=page.older) if page.older else None,
        "newer_url": _list_url(status=status, **filters, newer=page.newer) if page.newer else None,
        "newest_url": _list_url(status=status, **filters) if not is_first_page else None,
        # New jobs appear on the first page, and unfinished ones change: watch those.
        "live": is_first_page or any(not job.is_finished for job in page.jobs),
        "panel_url": request.get_full_path(),
        "show_owner": request.user.is_staff,
    }
    template = "jobs/_jobs_panel.html" if _wants_part(request, "jobs-panel") else "jobs/list.html"
    return render(request, template, context)


# --- Submit ---------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def job_new(request):
    kinds = all_kinds()
    data = request.POST if request.method == "POST" else None
    kind = get_kind((data or request.GET).get("kind", "")) or (None if data is not None else kinds[0])
    options = forms.SubmitOptionsForm(data, initial={"kind": kind.name if kind else ""}, kind=kind)
    params = forms.params_form(kind, data) if kind is not None else None
    status_code = 200
    if data is not None:
        if kind is None:
            options.add_error(None, "Choose a kind of job to run.")
        # Both forms are validated, so that every field's error shows at once.
        elif all([options.is_valid(), params.is_valid()]):
            try:
                outcome = services.job_submit(user=request.user, kind=kind.name, params=params.params(),
                                              priority=options.cleaned_data["priority"],
                                              run_at=options.cleaned_data["run_at"])
            except services.JobInputError as exc:
                forms.apply_input_errors(exc.errors, options=options, params=params)
            else:
                url = reverse("jobs:detail", args=[outcome.job.id])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
        status_code = 422
    context = {"kinds": kinds, "kind": kind, "options": options, "params_form": params}
    template = "jobs/_submit_form.html" if request.htmx and data is not None else "jobs/new.html"
    return render(request, template, context, status=status_code)


# --- One job --------------------------------------------------------------------------


def _job_context(request, job: Job, *, notice: str = "", notice_level: str = "success") -> dict:
    kind = get_kind(job.kind)
    result = selectors.job_result_value(job=job) if job.status in (Job.Status.SUCCEEDED, Job.Status.FAILED) else None
    run_late = (job.run_at - job.created_at).total_seconds() > 1
    return {
        "job": job,
        "kind": kind,
        "kind_title": kind.title if kind else job.kind,
        "errors": selectors.job_errors(job=job) if job.attempts else [],
        "params_blocks": present(job.params) if job.params else [],
        "result": result,
        "result_blocks": present(result) if job.status == Job.Status.SUCCEEDED else [],
        "result_json": raw_json(result) if result is not None else "",
        "timeline": [
            ("Queued", job.created_at, ""),
            *([("Runs after", job.run_at, "")] if run_late else []),
            ("Started", job.started_at, ""),
            *([("Next attempt", job.next_attempt_at, "")] if job.next_attempt_at else []),
            ("Cancelled" if job.cancelled_at else "Finished", job.finished_at, ""),
            ("Waited", None, duration(job.wait_seconds) or "—"),
            ("Ran for", None, duration(job.run_seconds) or "—"),
        ],
        "live": not job.is_finished,
        "notice": notice,
        "notice_level": notice_level,
    }


@login_required
@require_GET
def job_detail(request, job_id):
    job = selectors.job_get(user=request.user, job_id=job_id)
    if job is None:
        return _not_found(request)
    context = _job_context(request, job)
    template = "jobs/_job_live.html" if _wants_part(request, "job-live") else "jobs/detail.html"
    return render(request, template, context)


def _job_action(request, job_id, action, done: str):
    job = selectors.job_get(user=request.user, job_id=job_id)
    if job is None:
        return _not_found(request)
    try:
        job = action(job=job)
        notice, level = done, "success"
    except services.JobStateError as exc:
        notice, level = f"Not done: {exc}.", "error"
    if request.htmx:
        return render(request, "jobs/_job_live.html", _job_context(request, job, notice=notice, notice_level=level))
    getattr(messages, level)(request, notice)
    return redirect("jobs:detail", job_id=job.id)


@login_required
@require_POST
def job_cancel(request, job_id):
    return _job_action(request, job_id, services.job_cancel, "The job was cancelled.")


@login_required
@require_POST
def job_retry(request, job_id):
    return _job_action(request, job_id, services.job_retry, "The job was queued again.")


# --- Queues ---------------------------------------------------------------------------


def _percent(part: int, whole: int) -> int:
    return min(100, round(100 * part / whole)) if whole else 100


@login_required
@require_GET
def queues(request):
    overview = selectors.queue_overview()
    snap = overview.snapshot
    rows = [
        {
            "name": state.name,
            "depth": intcomma(state.depth),
            "limit": intcomma(state.limit),
            "low_mark": intcomma(state.low_mark),
            "closed": state.closed,
            "percent": _percent(state.depth, state.limit),
            "kinds": [k.name for k in all_kinds() if k.queue == state.name and not k.inline],
        }
        for state in (snap.queues.values() if snap else [])
    ]
    context = {
        "snapshot": snap,
        "rows": rows,
        "total_depth": intcomma(snap.total_depth) if snap else "",
        "total_limit": intcomma(snap.total_limit) if snap else "",
        "total_percent": _percent(snap.total_depth, snap.total_limit) if snap else 0,
        "drain_rate": f"{snap.drain_rate:,.1f}" if snap else "",
        "refusing_all": bool(snap and snap.total_closed),
        "refusing": [row["name"] for row in rows if row["closed"]],
        "broker_error": overview.broker_error,
        "workers": overview.workers,
        "lease_seconds": settings.JOBS_LEASE_SECONDS,
        "submissions": selectors.submission_counts(),
    }
    template = "jobs/_queues_panel.html" if _wants_part(request, "queues-panel") else "jobs/queues.html"
    return render(request, template, context)


# --- API tokens -----------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request):
    form = forms.ApiTokenForm(request.POST or None)
    new_token = None
    status_code = 200
    if request.method == "POST":
        if form.is_valid():
            token, plain = services.api_token_create(user=request.user, name=form.cleaned_data["name"])
            # Rendered, not redirected: the plain token exists only in this response.
            new_token = {"token": token, "plain": plain}
            form = forms.ApiTokenForm()
        else:
            status_code = 422
    context = {"form": form, "new_token": new_token, "tokens": list(selectors.api_tokens_of(user=request.user))}
    response = render(request, "jobs/tokens.html", context, status=status_code)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def token_revoke(request, token_id: int):
    token = selectors.api_token_get(user=request.user, token_id=token_id)
    if token is None:
        return _not_found(request, "token")
    services.api_token_revoke(token=token)
    messages.success(request, f"Token {token.prefix}… was revoked; it no longer authenticates.")
    return redirect("jobs:tokens")


@login_required
@require_GET
def stats(request):
    """Throughput, success rate and wait/run percentiles per kind, from the rollups (platform-wide)."""
    window = request.GET.get("window")
    window = window if window in selectors.STATS_WINDOWS else "hour"
    data = selectors.job_stats(window=window)
    return render(request, "jobs/stats.html", {"stats": data, "charts": charts.stats_charts(data),
                                               "counters": selectors.periodic_counters()})
