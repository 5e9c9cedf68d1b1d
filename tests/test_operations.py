"""Operations: pausing queues, bulk actions by filter, the audit log and the permissions behind them (services, API,
dashboard, /metrics)."""
import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from jobs import services
from jobs.infra import control
from jobs.infra.broker import broker_list_names
from jobs.models import AuditEntry, Job, QueuePause, Worker
from jobs.services import operations
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.django_db

S = Job.Status


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def broadcasts(monkeypatch):
    """The control commands the services send, instead of sending them."""
    sent = []
    monkeypatch.setattr(control, "cancel_consumer", lambda queue, destination=None: sent.append(
        ("cancel_consumer", queue, destination)))
    monkeypatch.setattr(control, "add_consumer", lambda queue, destination: sent.append(
        ("add_consumer", queue, destination)))
    return sent


def member(user, group: str):
    services.operator_groups_ensure()
    Group.objects.get(name=group).user_set.add(user)
    return type(user).objects.get(pk=user.pk)  # a fresh object: permissions are kept per object


def make_job(owner, *, kind="noop", status=S.FAILED, queue=None, params=None, error="", created_at=None,
             **fields) -> Job:
    now = created_at or timezone.now()
    return Job.objects.create(owner=owner, kind=kind, status=status, queue=queue or "default", params=params or {},
                              error=error, created_at=now, run_at=now, attempts=1 if status != S.QUEUED else 0,
                              **fields)


def queued_ids(redis_server, queue: str) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for name in broker_list_names(queue)
            for raw in redis_server.client().lrange(name, 0, -1)]


def statuses(*jobs) -> list[str]:
    return [Job.objects.get(pk=job.pk).status for job in jobs]


# --- Permissions and groups ---------------------------------------------------------------


def test_the_suggested_groups_are_made_with_their_permissions():
    import importlib
    from io import StringIO

    from django.core.management import call_command

    def codenames(name):
        return sorted(Group.objects.get(name=name).permissions.values_list("codename", flat=True))

    # The migration makes them on install (its own copy of the list); the command makes the missing ones again.
    assert importlib.import_module("jobs.migrations.0006_operations").OPERATOR_GROUPS == operations.OPERATOR_GROUPS
    Group.objects.filter(name__in=list(operations.OPERATOR_GROUPS)).delete()
    out = StringIO()
    call_command("operator_groups", stdout=out)
    assert out.getvalue().split("\n")[:4] == list(operations.OPERATOR_GROUPS)
    assert codenames("Operators (read-only)") == ["view_audit"]
    assert codenames("Retriers") == ["bulk_retry", "view_audit"]
    assert codenames("Pausers") == ["pause_queue", "view_audit"]
    assert codenames("Operators") == ["bulk_cancel", "bulk_retry", "pause_queue", "view_audit"]


def test_permissions_come_from_groups_and_superusers_have_them_all(user, admin_user, staff_user):
    assert not any(user.has_perm(p) for p in ("jobs.pause_queue", "jobs.bulk_retry", "jobs.view_audit"))
    assert all(admin_user.has_perm(p) for p in ("jobs.pause_queue", "jobs.bulk_retry", "jobs.bulk_cancel",
                                                "jobs.view_audit"))
    assert not staff_user.has_perm("jobs.pause_queue")  # staff alone is not a permission
    pauser = member(user, "Pausers")
    assert pauser.has_perm("jobs.pause_queue") and not pauser.has_perm("jobs.bulk_retry")


# --- Pausing queues: the service ----------------------------------------------------------


def test_pause_and_resume_record_the_state_broadcast_and_audit(user, broadcasts, django_capture_on_commit_callbacks):
    pauser = member(user, "Pausers")
    Worker.objects.create(name="cpu@host", queues=["cpu"])
    Worker.objects.create(name="all@host", queues=["default", "cpu", "io"])
    Worker.objects.create(name="gone@host", queues=["cpu"], last_seen_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        pause = services.queue_pause(queue="cpu", actor=pauser)
    assert pause.paused_by == pauser and services.paused_queue_names() == {"cpu"}
    # Every worker is told (one started a moment ago is not in the registry yet).
    assert broadcasts == [("cancel_consumer", "cpu", None)]
    with django_capture_on_commit_callbacks(execute=True):
        again = services.queue_pause(queue="cpu", actor=pauser)
    assert again.pk == pause.pk and len(broadcasts) == 1

    with django_capture_on_commit_callbacks(execute=True):
        assert services.queue_resume(queue="cpu", actor=pauser) is True
    # Only the live workers started with the queue take it again.
    assert broadcasts[1] == ("add_consumer", "cpu", ["all@host", "cpu@host"])
    assert services.paused_queue_names() == set()
    assert services.queue_resume(queue="cpu", actor=pauser) is False
    entries = list(AuditEntry.objects.order_by("id").values_list("actor_name", "action", "target"))
    assert entries == [("alice", "queue_pause", "queue:cpu"), ("alice", "queue_resume", "queue:cpu")]


def test_the_platform_queue_and_unknown_queues_cannot_be_paused(admin_user):
    with pytest.raises(services.JobStateError, match="platform queue"):
        services.queue_pause(queue="platform", actor=admin_user)
    with pytest.raises(services.NotFound):
        services.queue_pause(queue="nope", actor=admin_user)
    with pytest.raises(services.NotPermitted):
        services.queue_pause(queue="cpu", actor=type(admin_user).objects.create_user("plain", password="x" * 12))
    assert not QueuePause.objects.exists() and not AuditEntry.objects.exists()


def test_a_paused_queue_still_accepts_submissions_and_its_messages_wait(api, redis_server, settings,
                                                                       django_capture_on_commit_callbacks):
    services.queue_pause(queue="default", actor=None)
    settings.JOBS_QUEUE_LIMITS = {"default": 2}
    with django_capture_on_commit_callbacks(execute=True):
        first = api.post("/api/jobs", {"kind": "noop"})
        second = api.post("/api/jobs", {"kind": "noop"})
    assert first.status_code == second.status_code == 202
    assert sorted(queued_ids(redis_server, "default")) == sorted([first.json()["id"], second.json()["id"]])
    # Back pressure still applies: its depth grows to the limit, then 503.
    refused = api.post("/api/jobs", {"kind": "noop"})
    assert refused.status_code == 503 and refused.json()["error"] == "queue_full"


def test_the_claim_hands_a_paused_queues_job_back_and_resume_sends_it_again(user, redis_server, broadcasts,
                                                                            django_capture_on_commit_callbacks):
    from jobs.registry import get_kind

    job = services.job_submit(user=user, kind="noop").job
    services.queue_pause(queue="default", actor=None)
    # Its message reached a worker all the same (taken just before the pause reached it, say).
    outcome = services.execute_job(kind=get_kind("noop"), job_id=str(job.id), params={}, worker="w@host")
    job.refresh_from_db()
    assert outcome.status == "dropped" and job.status == S.QUEUED and job.attempts == 0
    assert job.published_at is None  # handed back, for publish-due once resumed
    redis_server.client().flushall()
    assert services.jobs_publish_due() == 0  # a paused queue's jobs wait
    assert queued_ids(redis_server, "default") == []
    with django_capture_on_commit_callbacks(execute=True):
        services.queue_resume(queue="default", actor=None)
    assert queued_ids(redis_server, "default") == [str(job.id)]
    outcome = services.execute_job(kind=get_kind("noop"), job_id=str(job.id), params={}, worker="w@host")
    assert outcome.status == "succeeded"


def test_recovery_leaves_a_paused_queues_waiting_jobs_alone(user, redis_server, settings):
    settings.JOBS_RECOVERY_AFTER_SECONDS = 0
    job = make_job(user, status=S.QUEUED, published_at=timezone.now() - timedelta(minutes=5))
    services.queue_pause(queue="default", actor=None)
    assert services.recover_jobs()["republished"] == 0
    services.queue_resume(queue="default", actor=None)
    assert services.recover_jobs()["republished"] == 1
    assert queued_ids(redis_server, "default") == [str(job.id)]


def test_a_workers_heartbeat_settles_its_consumers_with_the_paused_queues(broadcasts):
    QueuePause.objects.create(queue="cpu")
    done = services.worker_consumers_reconcile(worker="w@host", serves=["cpu", "default", "io", "platform"],
                                               consuming=["cpu", "default", "platform"])
    assert done == {"cancelled": ["cpu"], "added": ["io"]}
    assert broadcasts == [("cancel_consumer", "cpu", ["w@host"]), ("add_consumer", "io", ["w@host"])]
    broadcasts.clear()
    assert services.worker_consumers_reconcile(worker="w@host", serves=["cpu", "default"],
                                               consuming=["default"]) == {"cancelled": [], "added": []}
    assert broadcasts == []


def test_without_remote_control_the_claim_alone_keeps_a_paused_queue(monkeypatch, broadcasts):
    """SQS has no broadcast: a worker that left a queue at start could never be told to take it again."""
    QueuePause.objects.create(queue="cpu")
    assert services.worker_queues_to_leave(serves=["cpu", "io"]) == ["cpu"]
    monkeypatch.setattr(control, "supported", lambda: False)
    assert services.worker_queues_to_leave(serves=["cpu", "io"]) == []
    assert services.worker_consumers_reconcile(worker="w@host", serves=["cpu"], consuming=["cpu"]) == {
        "cancelled": [], "added": []}
    assert broadcasts == []


# --- Pausing queues: the API ----------------------------------------------------------------


def test_get_queues_answers_depth_limit_paused_and_workers(api, user, redis_server, settings):
    settings.JOBS_QUEUE_LIMITS = {"cpu": 50}
    Worker.objects.create(name="a@host", queues=["default", "cpu"])
    Worker.objects.create(name="b@host", queues=["cpu"])
    redis_server.client().rpush(broker_list_names("cpu")[0], *[b"x"] * 3)
    services.queue_pause(queue="cpu", actor=member(user, "Pausers"))
    queues = {q["name"]: q for q in api.get("/api/queues").json()}
    assert set(queues) == set(settings.JOBS_QUEUES)
    cpu = queues["cpu"]
    assert (cpu["depth"], cpu["limit"], cpu["paused"], cpu["paused_by"], cpu["workers"], cpu["accepting"]) == (
        3, 50, True, "alice", 2, True)
    assert cpu["paused_at"] is not None
    assert (queues["default"]["paused"], queues["default"]["workers"], queues["io"]["workers"]) == (False, 1, 0)


def test_pausing_through_the_api_needs_the_permission(api_for, user, other_user, broadcasts):
    plain, pauser = api_for(user), api_for(member(other_user, "Pausers"))
    for path in ("/api/queues/io/pause", "/api/queues/io/resume"):
        refused = plain.post(path)
        assert refused.status_code == 403 and "jobs.pause_queue" in refused.json()["detail"]
    assert not QueuePause.objects.exists() and not AuditEntry.objects.exists()

    paused = pauser.post("/api/queues/io/pause")
    assert paused.status_code == 200, paused.content
    assert paused.json()["name"] == "io" and paused.json()["paused"] is True
    assert paused.json()["paused_by"] == "bob"
    assert [q["paused"] for q in plain.get("/api/queues").json() if q["name"] == "io"] == [True]
    resumed = pauser.post("/api/queues/io/resume")
    assert resumed.status_code == 200 and resumed.json() == {"name": "io", "paused": False, "paused_at": None,
                                                              "paused_by": None}
    assert pauser.post("/api/queues/platform/pause").status_code == 409
    missing = pauser.post("/api/queues/nope/pause")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == [
        "queue_pause", "queue_resume"]


# --- Bulk actions: the service ----------------------------------------------------------------


def test_a_dry_run_counts_and_changes_nothing(user, other_user):
    retrier = member(user, "Retriers")
    mine = [make_job(user) for _ in range(3)] + [make_job(user, status=S.CANCELLED)]
    make_job(user, status=S.SUCCEEDED)
    make_job(user, status=S.RUNNING)
    make_job(other_user)
    result = services.jobs_bulk(actor=retrier, action="retry", filter=services.JobFilter(), dry_run=True)
    assert (result.matched, result.changed, result.dry_run) == (4, None, True)
    assert statuses(*mine) == [S.FAILED] * 3 + [S.CANCELLED]
    assert not AuditEntry.objects.exists()


def test_bulk_retry_requeues_the_users_own_matching_jobs_in_batches(user, other_user, redis_server,
                                                                    django_capture_on_commit_callbacks):
    retrier = member(user, "Retriers")
    mine = [make_job(user, attempt_limit=1) for _ in range(5)]
    for job in mine:
        TaskResult.objects.create(task_id=str(job.id), status="FAILURE")
    theirs = make_job(other_user)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.jobs_bulk(actor=retrier, action="retry", filter=services.JobFilter(status="failed"),
                                    dry_run=False, batch_size=2)
    assert (result.matched, result.changed) == (5, 5)
    for job in mine:
        job.refresh_from_db()
        assert (job.status, job.attempt_limit, job.error, job.finished_at) == (S.QUEUED, 2, "", None)
    assert sorted(queued_ids(redis_server, "default")) == sorted(str(job.id) for job in mine)
    assert not TaskResult.objects.exists()
    assert statuses(theirs) == [S.FAILED]
    entry = AuditEntry.objects.get()
    assert (entry.actor_name, entry.action, entry.target, entry.filter, entry.count, entry.detail) == (
        "alice", "bulk_retry", "", {"status": "failed"}, 5, {"matched": 5})
    # Safe to repeat: nothing matches any more.
    again = services.jobs_bulk(actor=retrier, action="retry", filter=services.JobFilter(status="failed"),
                               dry_run=False)
    assert (again.matched, again.changed) == (0, 0)


def test_a_job_that_left_the_matching_state_meanwhile_is_left_alone(user, monkeypatch):
    retrier = member(user, "Retriers")
    jobs = sorted((make_job(user) for _ in range(4)), key=lambda job: job.pk)
    real = operations.jobs_retry_locked
    seen = []

    def first_batch_then_a_job_finishes(*, jobs):
        seen.append([job.pk for job in jobs])
        if len(seen) == 1:  # between the batches, someone else retries the last job and it succeeds
            Job.objects.filter(pk=last.pk).update(status=S.SUCCEEDED)
        return real(jobs=jobs)

    last = jobs[-1]
    monkeypatch.setattr(operations, "jobs_retry_locked", first_batch_then_a_job_finishes)
    result = services.jobs_bulk(actor=retrier, action="retry", filter=services.JobFilter(), dry_run=False,
                                batch_size=2)
    assert (result.matched, result.changed) == (4, 3)
    assert statuses(*jobs) == [S.QUEUED, S.QUEUED, S.QUEUED, S.SUCCEEDED]
    assert seen == [[jobs[0].pk, jobs[1].pk], [jobs[2].pk]]
    assert AuditEntry.objects.get().count == 3


def test_bulk_cancel_stops_queued_and_running_jobs(user, monkeypatch, django_capture_on_commit_callbacks):
    from jobs.infra import broker

    canceller = member(user, "Operators")
    revoked = []
    monkeypatch.setattr(broker, "revoke", lambda task_id, terminate=True: revoked.append(task_id))
    queued = make_job(user, status=S.QUEUED)
    running = make_job(user, kind="steps", status=S.RUNNING)
    stuck = make_job(user, kind="count_primes", status=S.RETRYING)
    done = make_job(user, status=S.SUCCEEDED)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.jobs_bulk(actor=canceller, action="cancel", filter=services.JobFilter(), dry_run=False)
    assert (result.matched, result.changed) == (3, 3)
    assert statuses(queued, running, stuck, done) == [S.CANCELLED, S.CANCELLED, S.CANCELLED, S.SUCCEEDED]
    # As job_cancel: a running job stops at its next check (a terminable kind's run is stopped at once).
    assert revoked == []
    assert Job.objects.get(pk=running.pk).claim_token is None


def test_filters_narrow_by_status_kind_queue_owner_time_and_text(user, other_user, staff_user):
    now = timezone.now()
    a = make_job(user, kind="steps", params={"customer": "Zoë-42"}, created_at=now - timedelta(days=2))
    b = make_job(user, kind="steps", status=S.CANCELLED, error="TimeoutError: upstream",
                 created_at=now - timedelta(hours=1))
    c = make_job(user, kind="count_primes", queue="cpu", params={"limit": 42}, created_at=now)
    d = make_job(other_user, kind="steps", params={"customer": "zoë-42"})
    staff = member(staff_user, "Retriers")

    def matched(actor, **conditions):
        return set(services.jobs_matching(user=actor, action="retry", filter=services.JobFilter(**conditions)))

    assert matched(user) == {a, b, c}
    assert matched(staff) == {a, b, c, d}
    assert matched(user, status="cancelled") == {b}
    assert matched(user, status="running") == set()  # not a state retry applies to
    assert matched(user, kind="steps") == {a, b}
    assert matched(user, queue="cpu") == {c}
    assert matched(user, created_after=now - timedelta(hours=2)) == {b, c}
    assert matched(user, created_before=now - timedelta(hours=2)) == {a}
    assert matched(user, search="zoË-42") == {a}  # parameters, ignoring case, non-ASCII as typed
    assert matched(user, search="timeouterror") == {b}  # the error
    assert matched(user, search='"limit": 42') == {c}
    assert matched(staff, search="zoë-42") == {a, d}
    assert matched(staff, owner="bob") == {d}
    assert matched(user, owner="alice") == {a, b, c}


def test_another_users_jobs_do_not_exist_for_a_bulk_filter(user, other_user):
    retrier = member(user, "Retriers")
    make_job(other_user)
    for owner in ("bob", "nobody"):
        with pytest.raises(services.NotFound) as raised:
            services.jobs_bulk(actor=retrier, action="retry", filter=services.JobFilter(owner=owner))
        assert str(raised.value) == f"no owner {owner!r} among the jobs you may act on"


def test_tracked_celery_tasks_are_left_to_their_own_page(user, staff_user):
    operator = member(staff_user, "Operators")
    tracked = Job.objects.create(kind="myapp.tasks.send", status=S.FAILED, tracked=True)
    result = services.jobs_bulk(actor=operator, action="retry", filter=services.JobFilter(), dry_run=False)
    assert result.matched == 0 and statuses(tracked) == [S.FAILED]


# --- Bulk actions: the API --------------------------------------------------------------------


def test_bulk_through_the_api_counts_first_then_acts(api_for, user, other_user, redis_server,
                                                    django_capture_on_commit_callbacks):
    alice = api_for(member(user, "Retriers"))
    failed = [make_job(user, kind="steps", error="boom") for _ in range(2)]
    make_job(user, kind="noop")
    theirs = make_job(other_user, kind="steps")
    payload = {"action": "retry", "filter": {"kind": "steps", "search": "BOOM"}}
    dry = alice.post("/api/jobs/bulk", payload)
    assert dry.status_code == 200, dry.content
    assert dry.json() == {"action": "retry", "dry_run": True, "matched": 2}  # a dry run is the default
    assert statuses(*failed) == [S.FAILED, S.FAILED]
    with django_capture_on_commit_callbacks(execute=True):
        done = alice.post("/api/jobs/bulk", {**payload, "dry_run": False})
    assert done.status_code == 200 and done.json() == {"action": "retry", "dry_run": False, "matched": 2,
                                                       "changed": 2}
    assert statuses(*failed, theirs) == [S.QUEUED, S.QUEUED, S.FAILED]
    repeated = alice.post("/api/jobs/bulk", {**payload, "dry_run": False})
    assert repeated.json() == {"action": "retry", "dry_run": False, "matched": 0, "changed": 0}


def test_bulk_through_the_api_needs_the_permission_of_its_action(api_for, user):
    make_job(user, status=S.QUEUED)
    plain, retrier = api_for(user), api_for(member(type(user).objects.create_user("carol", password="x" * 12),
                                                   "Retriers"))
    for client, action in ((plain, "retry"), (plain, "cancel"), (retrier, "cancel")):
        refused = client.post("/api/jobs/bulk", {"action": action, "filter": {}, "dry_run": True})
        assert refused.status_code == 403, (action, refused.content)
        assert f"jobs.bulk_{action}" in refused.json()["detail"]
    assert statuses(*Job.objects.all()) == [S.QUEUED] and not AuditEntry.objects.exists()


def test_others_jobs_in_a_bulk_filter_are_404_unless_staff(api_for, user, other_user, staff_user):
    theirs = make_job(other_user, status=S.QUEUED)
    alice = api_for(member(user, "Operators"))
    seen = alice.post("/api/jobs/bulk", {"action": "cancel", "filter": {"owner": "bob"}, "dry_run": False})
    absent = alice.post("/api/jobs/bulk", {"action": "cancel", "filter": {"owner": "carol"}, "dry_run": False})
    assert seen.status_code == absent.status_code == 404
    assert seen.json()["detail"].replace("bob", "X") == absent.json()["detail"].replace("carol", "X")
    everything = alice.post("/api/jobs/bulk", {"action": "cancel", "filter": {}, "dry_run": False})
    assert everything.json()["matched"] == 0 and statuses(theirs) == [S.QUEUED]
    staff = api_for(member(staff_user, "Operators"))
    done = staff.post("/api/jobs/bulk", {"action": "cancel", "filter": {"owner": "bob"}, "dry_run": False})
    assert done.json()["changed"] == 1 and statuses(theirs) == [S.CANCELLED]


@pytest.mark.parametrize("payload, loc", [
    ({"action": "delete"}, ["body", "payload", "action"]),
    ({}, ["body", "payload", "action"]),
    ({"action": "retry", "filter": {"colour": "red"}}, ["body", "payload", "filter", "colour"]),
    ({"action": "retry", "filter": {"status": "lost"}}, ["body", "payload", "filter", "status"]),
    ({"action": "retry", "filter": {"search": "a\x00b"}}, ["body", "payload", "filter", "search"]),
    ({"action": "retry", "filter": {"created_after": 1700000000}}, ["body", "payload", "filter", "created_after"]),
    ({"action": "retry", "filter": {"created_before": "0001-01-01T00:00:00+14:00"}},
     ["body", "payload", "filter", "created_before"]),
    ({"action": "retry", "dry_run": "false"}, ["body", "payload", "dry_run"]),
])
def test_bad_bulk_requests_are_422_naming_the_field(api_for, user, payload, loc):
    response = api_for(member(user, "Operators")).post("/api/jobs/bulk", payload)
    assert response.status_code == 422, response.content
    assert loc in [e["loc"] for e in response.json()["detail"]]


# --- The audit log ----------------------------------------------------------------------------------


def test_single_actions_and_token_revocation_are_recorded(api, user, alice_browser, other_user):
    job = make_job(user, status=S.QUEUED)
    assert api.post(f"/api/jobs/{job.id}/cancel").status_code == 200
    assert api.post(f"/api/jobs/{job.id}/retry").status_code == 202
    alice_browser.post(reverse("jobs:cancel", args=[job.id]))
    token, _ = services.api_token_create(user=user, name="laptop")
    alice_browser.post(reverse("jobs:token_revoke", args=[token.id]))
    alice_browser.post(reverse("jobs:token_revoke", args=[token.id]))  # once revoked, nothing more happens
    entries = list(AuditEntry.objects.order_by("id").values_list("actor_name", "action", "target", "count"))
    assert entries == [("alice", "job_cancel", f"job:{job.id}", 1), ("alice", "job_retry", f"job:{job.id}", 1),
                       ("alice", "job_cancel", f"job:{job.id}", 1), ("alice", "token_revoke", f"token:{token.prefix}",
                                                                     None)]
    assert AuditEntry.objects.order_by("id").last().detail == {"owner": "alice", "name": "laptop"}
    # A refused action leaves no entry.
    assert api.post(f"/api/jobs/{job.id}/cancel").status_code == 409
    assert AuditEntry.objects.count() == 4


def test_the_hook_records_what_other_services_do(user):
    entry = services.audit_record(actor=user, action=AuditEntry.Action.SCHEDULE_RUN, target="schedule:nightly")
    assert (entry.actor_name, entry.get_action_display(), entry.target) == ("alice", "Ran a schedule now",
                                                                           "schedule:nightly")


def test_get_audit_needs_the_permission_and_lists_newest_first(api_for, user, other_user, admin_user):
    services.queue_pause(queue="io", actor=admin_user)
    services.queue_resume(queue="io", actor=admin_user)
    job = make_job(other_user)
    services.job_retry(job=job, actor=other_user)
    refused = api_for(user).get("/api/audit")
    assert refused.status_code == 403 and "jobs.view_audit" in refused.json()["detail"]
    reader = api_for(member(user, "Operators (read-only)"))
    page = reader.get("/api/audit").json()
    assert page["count"] == 3
    assert [(e["actor"], e["action"], e["target"]) for e in page["items"]] == [
        ("bob", "job_retry", f"job:{job.id}"), ("admin", "queue_resume", "queue:io"), ("admin", "queue_pause", "queue:io")]
    assert set(page["items"][0]) == {"id", "at", "actor", "action", "target", "filter", "count", "detail"}
    assert [e["action"] for e in reader.get("/api/audit", action="queue_pause").json()["items"]] == ["queue_pause"]
    assert reader.get("/api/audit", actor="bob").json()["count"] == 1
    assert reader.get("/api/audit", target="queue:io").json()["count"] == 2
    assert reader.get("/api/audit", limit=1, offset=1).json()["items"][0]["action"] == "queue_resume"
    assert reader.get("/api/audit", action="bogus").status_code == 422


# --- The dashboard ------------------------------------------------------------------------------


@pytest.fixture
def alice_browser(client, user):
    client.force_login(user)
    return client


def login(client, user):
    client.force_login(user)
    return client


def test_the_queues_page_offers_pause_to_those_who_may(client, user, other_user, broadcasts):
    page = login(client, user).get(reverse("jobs:queues")).content.decode()
    assert "Pause queue" not in page and "Bulk actions" not in page and "Audit log" not in page
    refused = client.post(reverse("jobs:queue_pause", args=["cpu"]))
    assert refused.status_code == 403 and b"jobs.pause_queue" in refused.content
    assert not QueuePause.objects.exists()

    login(client, member(other_user, "Operators"))
    page = client.get(reverse("jobs:queues")).content.decode()
    assert 'aria-label="Pause queue cpu"' in page and "Bulk actions" in page and "Audit log" in page
    response = client.post(reverse("jobs:queue_pause", args=["cpu"]), follow=True)
    assert b"Queue cpu is paused" in response.content
    cpu_row = re.search(r'<th scope="row" class="mono">cpu</th>(.*?)</tr>', response.content.decode(), re.S).group(1)
    assert "status-paused" in cpu_row and "by bob" in cpu_row and 'aria-label="Resume queue cpu"' in cpu_row
    response = client.post(reverse("jobs:queue_resume", args=["cpu"]), follow=True)
    assert b"Queue cpu is resumed" in response.content and not QueuePause.objects.exists()
    assert client.post(reverse("jobs:queue_pause", args=["nope"])).status_code == 404
    response = client.post(reverse("jobs:queue_pause", args=["platform"]), follow=True)
    assert b"cannot be paused" in response.content


def test_the_bulk_page_counts_then_acts_on_the_confirmed_count(client, user, other_user,
                                                               django_capture_on_commit_callbacks):
    assert login(client, user).get(reverse("jobs:bulk")).status_code == 403
    login(client, member(user, "Retriers"))
    jobs = [make_job(user, kind="steps") for _ in range(3)]
    theirs = make_job(other_user, kind="steps")
    page = client.get(reverse("jobs:bulk")).content.decode()
    assert 'value="retry"' in page and 'value="cancel"' not in page and 'name="owner"' not in page
    preview = client.get(reverse("jobs:bulk"), {"action": "retry", "kind": "steps"})
    html = preview.content.decode()
    assert preview.status_code == 200 and re.search(r'id="bulk-matched">3 jobs<', html)
    assert 'data-confirm="Retry 3 jobs?' in html and 'name="expected" value="3"' in html
    assert statuses(*jobs) == [S.FAILED] * 3  # counting changes nothing

    # More jobs match than were confirmed: nothing is done.
    extra = make_job(user, kind="steps")
    stale = client.post(reverse("jobs:bulk"), {"action": "retry", "kind": "steps", "expected": "3"}, follow=True)
    assert b"Nothing was done: 4 jobs match now" in stale.content
    assert statuses(*jobs, extra) == [S.FAILED] * 4

    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(reverse("jobs:bulk"), {"action": "retry", "kind": "steps", "expected": "4"}, follow=True)
    html = done.content.decode()
    assert "Retried 4 of 4 matching jobs." in html and re.search(r'id="bulk-matched">0 jobs<', html)
    assert statuses(*jobs, extra, theirs) == [S.QUEUED] * 4 + [S.FAILED]
    assert AuditEntry.objects.get().filter == {"kind": "steps"}


def test_the_bulk_page_lets_staff_filter_by_owner(client, staff_user, other_user):
    theirs = make_job(other_user)
    login(client, member(staff_user, "Operators"))
    html = client.get(reverse("jobs:bulk"), {"action": "cancel", "owner": "bob", "status": "failed"}).content.decode()
    assert 'name="owner"' in html and re.search(r'id="bulk-matched">0 jobs<', html)
    html = client.get(reverse("jobs:bulk"), {"action": "retry", "owner": "bob"}).content.decode()
    assert re.search(r'id="bulk-matched">1 job<', html) and "owner bob" in html
    missing = client.get(reverse("jobs:bulk"), {"action": "retry", "owner": "carol"})
    assert missing.status_code == 422 and b"No such user." in missing.content
    bad = client.get(reverse("jobs:bulk"), {"action": "retry", "created_after": "yesterday"})
    assert bad.status_code == 422
    assert statuses(theirs) == [S.FAILED]


def test_the_audit_page_lists_entries_for_those_who_may_read_it(client, user, admin_user):
    assert login(client, user).get(reverse("jobs:audit")).status_code == 403
    services.queue_pause(queue="io", actor=admin_user)
    services.jobs_bulk(actor=admin_user, action="cancel", filter=services.JobFilter(kind="steps"), dry_run=False)
    login(client, member(user, "Operators (read-only)"))
    html = client.get(reverse("jobs:audit")).content.decode()
    assert "<td>Paused a queue</td>" in html and "queue:io" in html and "<td>Cancelled jobs by filter</td>" in html
    assert "{&quot;kind&quot;: &quot;steps&quot;}" in html
    only = client.get(reverse("jobs:audit"), {"action": "queue_pause"}).content.decode()
    assert "queue:io" in only and "<td>Cancelled jobs by filter</td>" not in only


def test_staff_find_the_operations_pages_in_the_navigation(client, staff_user, user):
    html = login(client, staff_user).get(reverse("jobs:list")).content.decode()
    assert f'href="{reverse("jobs:bulk")}"' in html and f'href="{reverse("jobs:audit")}"' in html
    html = login(client, user).get(reverse("jobs:list")).content.decode()
    assert f'href="{reverse("jobs:bulk")}"' not in html


# --- /metrics ------------------------------------------------------------------------------------


def test_metrics_say_which_queues_are_paused(client, staff_user):
    services.queue_pause(queue="cpu", actor=None)
    samples = scrape(login(client, staff_user))
    assert value(samples, "jobs_queue_paused", queue="cpu") == 1
    assert value(samples, "jobs_queue_paused", queue="io") == 0
    assert ("jobs_queue_paused", (("queue", "default"),)) in samples


def test_the_operations_pages_carry_no_inline_script_or_style(client, admin_user, user):
    from tests.test_security import POLICY, policy_of

    make_job(user)
    services.queue_pause(queue="io", actor=admin_user)
    login(client, admin_user)
    pages = [client.get(reverse("jobs:queues")), client.get(reverse("jobs:bulk")),
             client.get(reverse("jobs:bulk"), {"action": "retry"}), client.get(reverse("jobs:audit"))]
    login(client, user)
    pages.append(client.get(reverse("jobs:audit")))  # refused: 403
    assert [page.status_code for page in pages] == [200, 200, 200, 200, 403]
    for response in pages:
        html = response.content.decode()
        assert policy_of(response) == POLICY
        for tag, body in re.findall(r"(<script\b[^>]*>)(.*?)</script>", html, re.S):
            assert "src=" in tag and not body.strip()
        assert not re.search(r"<[^>]+\sstyle=", html) and not re.search(r"<[^>]+\son[a-z]+=", html)
