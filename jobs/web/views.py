"""The dashboard (HTML): thin views over selectors and services; htmx requests get the page's live part only."""
from __future__ import annotations

import json
import uuid
from functools import wraps
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, available_timezones

from django.conf import settings
from django.contrib import messages
from django.contrib.humanize.templatetags.humanize import intcomma, naturaltime
from django.contrib.auth.decorators import login_required as auth_login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from .. import selectors, services
from ..models import Job
from ..registry import all_kinds, get_kind
from . import charts, forms
from .presenters import duration, every_text, local_time, present, raw_json

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
        job = action(job=job, actor=request.user)
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
    paused = overview.paused
    rows = [
        {
            "name": state.name,
            "depth": intcomma(state.depth),
            "limit": intcomma(state.limit),
            "low_mark": intcomma(state.low_mark),
            "closed": state.closed,
            "percent": _percent(state.depth, state.limit),
            "kinds": [k.name for k in all_kinds() if k.queue == state.name and not k.inline],
            "paused": paused.get(state.name),
        }
        for state in (snap.queues.values() if snap else [])
    ]
    for worker in overview.workers:
        worker.queue_labels = [f"{q} (paused)" if q in paused else q for q in worker.queues]
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
        "operator": selectors.operator_permissions(user=request.user),
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
    services.api_token_revoke(token=token, actor=request.user)
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


# --- Time zones ---------------------------------------------------------------------------

TIME_ZONE_SESSION_KEY = "time_zone"
TIME_ZONES = frozenset(available_timezones())


def user_zone(request) -> ZoneInfo:
    """The time zone the user's browser reported (kept in the session), else UTC."""
    name = request.session.get(TIME_ZONE_SESSION_KEY)
    return ZoneInfo(name if name in TIME_ZONES else "UTC")


@login_required
@require_POST
def set_time_zone(request):
    """The browser's time zone (static/jobs/timezone.js sends it once): the schedules and timeline pages show
    times in it, with UTC on hover."""
    name = request.POST.get("time_zone", "")
    if name not in TIME_ZONES:
        return HttpResponse(f"unknown time zone {name[:100]!r}", status=422, content_type="text/plain")
    request.session[TIME_ZONE_SESSION_KEY] = name
    return HttpResponse(status=204)


def _safe_next(request, fallback: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return fallback


# --- Schedules ------------------------------------------------------------------------------


def _schedule_row(schedule: selectors.ScheduleInfo, zone, titles: dict) -> dict:
    if schedule.every_seconds is not None:
        when = every_text(schedule.every_seconds)
    elif schedule.crontab is not None:
        when = f"at “{schedule.crontab}” ({schedule.crontab_timezone})"
    else:
        when = "as set in the admin"
    return {
        "id": schedule.id,
        "name": schedule.name,
        "kind": schedule.kind,
        "kind_title": titles.get(schedule.kind, schedule.kind),
        "params": json.dumps(schedule.params, ensure_ascii=False),
        "params_blocks": present(schedule.params) if schedule.params else [],
        "owner": schedule.owner,
        "when": when,
        "enabled": schedule.enabled,
        "catch_up": schedule.catch_up,
        "last": local_time(schedule.last_run_at, zone),
        "next": local_time(schedule.next_run_at, zone),
        "overdue": schedule.enabled and schedule.overdue,
        "missed": intcomma(schedule.missed_runs),
        "refused": intcomma(schedule.refused_runs),
        "may_manage": schedule.may_manage,
        "url": reverse("jobs:schedule_detail", args=[schedule.id]),
    }


def _zone_context(request) -> dict:
    zone = user_zone(request)
    return {"zone": zone.key, "zone_known": TIME_ZONE_SESSION_KEY in request.session}


@login_required
@require_GET
def schedules(request):
    titles = {k.name: k.title for k in all_kinds()}
    zone = user_zone(request)
    rows = [_schedule_row(s, zone, titles) for s in selectors.schedule_list(user=request.user)]
    context = {"schedules": rows, "panel_url": request.get_full_path(), **_zone_context(request)}
    template = "jobs/_schedules_panel.html" if _wants_part(request, "schedules-panel") else "jobs/schedules.html"
    return render(request, template, context)


@login_required
@require_GET
def schedule_detail(request, schedule_id: int):
    schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)
    if schedule is None:
        return _not_found(request, "schedule")
    zone = user_zone(request)
    runs = selectors.schedule_runs(user=request.user, schedule=schedule)
    detail_url = reverse("jobs:detail", args=[_URL_PLACEHOLDER])
    now = timezone.now()
    jobs = [{
        "id": str(job.id), "short_id": str(job.id)[:8], "status": job.status,
        "url": detail_url.replace(str(_URL_PLACEHOLDER), str(job.id)),
        "trigger": selectors.schedule_run_trigger(job), "created": local_time(job.created_at, zone),
        "duration": duration(((job.finished_at or now) - job.started_at).total_seconds()) if job.started_at else "",
        "error": job.error,
    } for job in runs.jobs]
    skipped = sorted(
        [{"what": "refused", "at": local_time(e["at"], zone), "reason": e.get("reason", "")} for e in runs.refused]
        + [{"what": "invalid", "at": local_time(e["at"], zone), "reason": e.get("reason", "")} for e in runs.invalid],
        key=lambda e: e["at"].iso, reverse=True)
    missed = [{"at": local_time(e["at"], zone), "missed": intcomma(e.get("missed", 0)),
               "since": local_time(e.get("since"), zone), "until": local_time(e.get("until"), zone),
               "policy": e.get("policy", "once")} for e in runs.missed]
    context = {
        "schedule": _schedule_row(schedule, zone, {k.name: k.title for k in all_kinds()}),
        "jobs": jobs, "skipped": skipped, "missed": missed, "runs_shown": selectors.SCHEDULE_RUNS_SHOWN,
        "live_url": request.get_full_path(), "admin_url": reverse("admin:django_celery_beat_periodictask_change",
                                                                  args=[schedule.id]) if request.user.is_staff else "",
        **_zone_context(request),
    }
    template = "jobs/_schedule_live.html" if _wants_part(request, "schedule-live") else "jobs/schedule_detail.html"
    return render(request, template, context)


def _schedule_action(request, schedule_id: int, action, done: str):
    schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)
    if schedule is None:
        return _not_found(request, "schedule")
    try:
        outcome = action(user=request.user, task=schedule.task)
    except services.NotPermitted as exc:
        raise PermissionDenied(str(exc)) from None
    except services.JobStateError as exc:
        messages.error(request, f"Not done: {exc}.")
    else:
        messages.success(request, done.format(name=schedule.name, job=getattr(outcome, "id", "")))
    return redirect(_safe_next(request, reverse("jobs:schedule_detail", args=[schedule.id])))


@login_required
@require_POST
def schedule_run(request, schedule_id: int):
    return _schedule_action(request, schedule_id, services.schedule_run_now,
                            "“{name}” ran now: job {job} was submitted.")


@login_required
@require_POST
def schedule_pause(request, schedule_id: int):
    return _schedule_action(request, schedule_id, services.schedule_pause,
                            "“{name}” is paused: no runs until you resume it.")


@login_required
@require_POST
def schedule_resume(request, schedule_id: int):
    return _schedule_action(request, schedule_id, services.schedule_resume,
                            "“{name}” is running again: its next run is one period (or crontab time) from now.")


def _run_as_choices(user):
    """Whom a user may schedule jobs as: themselves; staff with the permission, any active user."""
    if not (user.is_staff and user.has_perm(services.schedules.CREATE_OTHERS_PERMISSION)):
        return None
    return [(u, u) for u in selectors.active_usernames()]


@login_required
@require_http_methods(["GET", "POST"])
def schedule_new(request):
    kinds = all_kinds()
    data = request.POST if request.method == "POST" else None
    kind = get_kind((data or request.GET).get("kind", "")) or kinds[0]
    zone = user_zone(request)
    form = forms.ScheduleForm(data, zones=sorted(TIME_ZONES), run_as_choices=_run_as_choices(request.user),
                              initial={"crontab_timezone": zone.key, "run_as": request.user.get_username()})
    params = forms.params_form(kind, data)
    status_code = 200
    if data is not None:
        if all([form.is_valid(), params.is_valid()]):
            clean = form.cleaned_data
            interval = clean["timing"] == "interval"
            try:
                task = services.schedule_create(
                    user=request.user, name=clean["name"], kind=kind.name, params=params.params(),
                    every_seconds=clean["every_seconds"] if interval else None,
                    crontab=None if interval else clean["crontab"], crontab_timezone=clean["crontab_timezone"],
                    run_as=clean.get("run_as") or None, catch_up=clean["catch_up"], enabled=not clean["paused"])
            except services.ScheduleNameTaken as exc:
                form.add_error("name", str(exc))
            except services.NotPermitted as exc:
                form.add_error(None, str(exc))
            except services.JobInputError as exc:
                forms.apply_schedule_errors(exc.errors, form=form, params=params)
            else:
                messages.success(request, f"Schedule “{task.name}” created.")
                return redirect("jobs:schedule_detail", schedule_id=task.pk)
        status_code = 422
    context = {"kinds": kinds, "kind": kind, "form": form, "params_form": params, **_zone_context(request)}
    return render(request, "jobs/schedule_new.html", context, status=status_code)


# --- Timelines (the fan-out kind) --------------------------------------------------------------


def _followers_context(reader_id: int) -> dict:
    followers = selectors.followers_of(author_id=reader_id)
    names = selectors.usernames(followers.first)
    return {"count": intcomma(followers.count), "n": followers.count, "more": followers.count > len(followers.first),
            "list": [{"id": f, "name": names.get(f, ""), "url": reverse("jobs:timeline_of", args=[f])}
                     for f in followers.first]}


def _timeline_context(request, reader_id: int, post_id) -> dict:
    zone = user_zone(request)
    delivery = selectors.post_delivery(user=request.user, post_id=post_id) if post_id else None
    entries = selectors.timeline_entries(reader_id=reader_id)
    names = selectors.usernames({reader_id, *(e.author_id for e in entries)})
    return {
        "reader_id": reader_id,
        "reader_name": names.get(reader_id, ""),
        "entries": [{"text": e.text, "author": names.get(e.author_id, f"user {e.author_id}"),
                     "author_id": e.author_id, "at": local_time(e.created_at, zone), "post_id": str(e.post_id),
                     "new": delivery is not None and e.post_id == delivery.job.id} for e in entries],
        "followers": _followers_context(reader_id),
        "delivery": _delivery_context(delivery, reader_id=reader_id) if delivery else None,
        **_zone_context(request),
    }


def _delivery_context(delivery: selectors.PostDelivery, *, reader_id: int | None) -> dict:
    url = reverse("jobs:post_delivery", args=[delivery.job.id])
    return {
        "post_id": str(delivery.job.id),
        # The timeline it is shown on: the author's own gets its followers list again once delivery is done.
        "url": f"{url}?reader={reader_id}" if reader_id is not None else url,
        "job_url": reverse("jobs:detail", args=[delivery.job.id]),
        "status": delivery.job.status,
        "delivered": intcomma(delivery.delivered),
        "followers": intcomma(delivery.followers),
        "percent": str(delivery.percent),
        "live": not delivery.job.is_finished,
    }


@login_required
@require_http_methods(["GET", "POST"])
def timeline(request):
    """Post as yourself (staff: as any user) and see it on your timeline at once, and its delivery live."""
    authors = [(u.pk, u.get_username()) for u in selectors.active_users()] if request.user.is_staff else None
    data = request.POST if request.method == "POST" else None
    form = forms.TimelinePostForm(data, authors=authors, initial={"author": request.user.pk})
    status_code = 200
    if data is not None:
        if form.is_valid():
            clean = form.cleaned_data
            author_id = clean.get("author") or request.user.pk
            try:
                job = services.timeline_post(user=request.user, author_id=author_id, text=clean["text"],
                                             ensure_followers=clean.get("ensure_followers") or 0,
                                             batch_size=clean.get("batch_size"))
            except services.NotPermitted as exc:
                form.add_error("author", str(exc))
            except services.JobInputError as exc:
                for error in exc.errors:
                    field = str(error["loc"][-1]) if error.get("loc") else None
                    field = {"author_id": "author"}.get(field, field)
                    form.add_error(field if field in form.fields else None, error["msg"])
            else:
                if author_id == request.user.pk:
                    return redirect(f"{reverse('jobs:timeline')}?post={job.id}")
                return redirect(f"{reverse('jobs:timeline_of', args=[author_id])}?post={job.id}")
        status_code = 422
    post_id = request.GET.get("post") or selectors.latest_post_of(user=request.user)
    context = {"form": form, "own": True, **_timeline_context(request, request.user.pk, post_id)}
    return render(request, "jobs/timeline.html", context, status=status_code)


@login_required
@require_GET
def timeline_of(request, reader_id: int):
    """One reader's timeline, read-only: yours, a follower's, or (staff) anyone's."""
    if not 0 < reader_id < 2**63 or not selectors.may_read_timeline(user=request.user, reader_id=reader_id):
        return _not_found(request, "timeline")
    context = {"own": reader_id == request.user.pk,
               **_timeline_context(request, reader_id, request.GET.get("post"))}
    return render(request, "jobs/timeline.html", context)


@login_required
@require_GET
def post_delivery(request, post_id):
    """The live counter of a post's delivery (polled while its job runs)."""
    delivery = selectors.post_delivery(user=request.user, post_id=post_id)
    if delivery is None:
        return _not_found(request, "post")
    reader = request.GET.get("reader", "")
    reader_id = int(reader) if reader.isdigit() and int(reader) < 2**63 else None
    context = {"delivery": _delivery_context(delivery, reader_id=reader_id)}
    if delivery.job.is_finished and reader_id == delivery.author_id:
        # The job may have given the author followers (a demo's): the page's list follows, out of band.
        context.update(followers=_followers_context(reader_id), own=reader_id == request.user.pk, oob=True)
    return render(request, "jobs/_delivery.html", context)
