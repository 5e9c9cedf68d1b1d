"""The dashboard's operations pages: pausing and resuming queues, bulk actions by filter, the audit log."""
from __future__ import annotations

import json
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.humanize.templatetags.humanize import intcomma
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import selectors, services
from ..models import AuditEntry
from ..registry import all_kinds
from . import forms
from .views import _not_found, login_required


def _forbidden(request, reason: str):
    return render(request, "jobs/forbidden.html", {"reason": reason}, status=403)


# --- Pausing queues ------------------------------------------------------------------------


def _queue_action(request, queue: str, action, done: str, unchanged: str):
    try:
        changed = action(queue=queue, actor=request.user)
    except services.NotPermitted as exc:
        return _forbidden(request, str(exc))
    except services.NotFound:
        return _not_found(request, "queue")
    except services.JobStateError as exc:
        messages.error(request, f"Not done: {exc}.")
        return redirect("jobs:queues")
    messages.success(request, (done if changed else unchanged).format(queue=queue))
    return redirect("jobs:queues")


@login_required
@require_POST
def queue_pause(request, queue: str):
    return _queue_action(request, queue, services.queue_pause,
                         "Queue {queue} is paused: workers take none of its jobs until it is resumed (running ones "
                         "finish). Submissions are still accepted up to its limit.", "Queue {queue} is paused.")


@login_required
@require_POST
def queue_resume(request, queue: str):
    return _queue_action(request, queue, services.queue_resume,
                         "Queue {queue} is resumed: its workers take its jobs again.",
                         "Queue {queue} was not paused.")


# --- Bulk actions --------------------------------------------------------------------------

VERBS = {"retry": ("Retry", "retried"), "cancel": ("Cancel", "cancelled")}


def _job_filter(data: dict) -> services.JobFilter:
    return services.JobFilter(**{name: data.get(name) or None for name in (
        "status", "kind", "queue", "owner", "created_after", "created_before", "search")})


def _describe(data: dict, *, staff: bool) -> list[str]:
    """The filter in words, for the preview and the confirmation."""
    parts = []
    for name, label in (("status", "status"), ("kind", "kind"), ("queue", "queue"), ("owner", "owner")):
        if data.get(name):
            parts.append(f"{label} {data[name]}")
    if data.get("created_after"):
        parts.append(f"created at or after {data['created_after']:%Y-%m-%d %H:%M} UTC")
    if data.get("created_before"):
        parts.append(f"created before {data['created_before']:%Y-%m-%d %H:%M} UTC")
    if data.get("search"):
        parts.append(f"parameters or error containing “{data['search']}”")
    if not staff:
        parts.append("your own jobs")
    return parts


def _count(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


@login_required
@require_http_methods(["GET", "POST"])
def bulk(request):
    """Filter, count (a dry run, by GET), confirm (a POST that states the count it confirms), then the result."""
    allowed = selectors.operator_permissions(user=request.user)
    actions = [action for action in ("retry", "cancel") if allowed[f"bulk_{action}"]]
    if not actions:
        return _forbidden(request, "you may not retry or cancel jobs in bulk: that needs the jobs.bulk_retry or "
                                   "jobs.bulk_cancel permission")
    staff = request.user.is_staff
    data = request.POST if request.method == "POST" else (request.GET if "action" in request.GET else None)
    form = forms.BulkActionForm(data, actions=actions, kinds=[(k.name, k.title) for k in all_kinds()],
                                queues=list(settings.JOBS_QUEUES), staff=staff,
                                initial={"action": actions[0]})
    preview, status = None, 200
    if data is not None:
        if not form.is_valid():
            status = 422
        else:
            action, job_filter = form.cleaned_data["action"], _job_filter(form.cleaned_data)
            # A confirmation states the count it confirms: more jobs matching by now is a new question.
            confirmed = _count(request.POST.get("expected", "")) if request.method == "POST" else None
            try:
                preview = services.jobs_bulk(actor=request.user, action=action, filter=job_filter,
                                             dry_run=confirmed is None, max_matched=confirmed)
            except services.NotPermitted as exc:
                return _forbidden(request, str(exc))
            except services.NotFound:
                form.add_error("owner", "No such user.")
                preview, status = None, 422
            else:
                if not preview.dry_run:
                    left = preview.matched - preview.changed
                    messages.success(request, f"{VERBS[action][1].capitalize()} {intcomma(preview.changed)} of "
                                              f"{intcomma(preview.matched)} matching jobs."
                                     + (f" {intcomma(left)} had left that state meanwhile and were left alone."
                                        if left else ""))
                    return redirect(f"{reverse('jobs:bulk')}?{urlencode(form.query())}")
                if request.method == "POST":
                    messages.warning(request, f"Nothing was done: {intcomma(preview.matched)} jobs match now, not "
                                              f"the {intcomma(confirmed) if confirmed is not None else 'none'} you "
                                              f"confirmed. Check the count and confirm again.")
    context = {"form": form, "preview": preview, "staff": staff,
               "query": form.query() if preview is not None else {},
               "verb": VERBS[preview.action][0] if preview else "",
               "described": _describe(form.cleaned_data, staff=staff) if preview is not None else []}
    return render(request, "jobs/bulk.html", context, status=status)


# --- The audit log -----------------------------------------------------------------------------


@login_required
@require_GET
def audit(request):
    if not request.user.has_perm("jobs.view_audit"):
        return _forbidden(request, "you may not read the audit log: that needs the jobs.view_audit permission")
    action = request.GET.get("action") or None
    if action not in AuditEntry.Action.values:
        action = None
    # No NUL: PostgreSQL refuses it even in a query.
    actor = request.GET.get("actor", "").replace("\x00", "").strip()[:150] or None
    target = request.GET.get("target", "").replace("\x00", "").strip()[:300] or None
    before = request.GET.get("before", "")
    entries, older = selectors.audit_page(action=action, actor=actor, target=target, before=_count(before))
    for entry in entries:
        entry.filter_text = json.dumps(entry.filter, ensure_ascii=False, sort_keys=True) if entry.filter else ""
        entry.matched = entry.detail.get("matched") if isinstance(entry.detail, dict) else None
    query = {name: value for name, value in (("action", action), ("actor", actor), ("target", target)) if value}
    context = {
        "entries": entries,
        "actions": AuditEntry.Action.choices,
        "action": action,
        "actor": actor or "",
        "target": target or "",
        "older_url": f"{reverse('jobs:audit')}?{urlencode({**query, 'before': older})}" if older else None,
        "newest_url": f"{reverse('jobs:audit')}?{urlencode(query)}" if before else None,
    }
    return render(request, "jobs/audit.html", context)
