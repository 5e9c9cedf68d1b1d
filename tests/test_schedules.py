"""User schedules: the services (create, run now, pause, resume, catch-up), when they run next (interval and crontab,
across daylight saving changes), their run history, the API and the dashboard pages."""
import json
import re
from datetime import datetime, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from jobs import selectors, services
from jobs.infra import counters
from jobs.models import Job
from jobs.services import admission, schedules
from jobs.web.presenters import local_time

pytestmark = pytest.mark.django_db

UTC = dt_timezone.utc
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def manager(django_user_model):
    """Staff with django-celery-beat's add and change permissions: may act on anyone's schedules."""
    staff = django_user_model.objects.create_user(username="manager", password="manager-password-1", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["add_periodictask", "change_periodictask"]))
    return django_user_model.objects.get(pk=staff.pk)  # permissions are cached per instance


def create(user, name="primes", **fields):
    defaults = {"kind": "count_primes", "params": {"limit": 5000}, "every_seconds": 60}
    return services.schedule_create(user=user, name=name, **{**defaults, **fields})


def at(text: str, zone=UTC) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


# --- Creating ---------------------------------------------------------------------------


def test_a_schedule_runs_the_submit_task_with_its_kind_params_owner_and_policy(user):
    task = create(user, catch_up="skip")
    assert task.task == services.SCHEDULED_JOB_TASK == "jobs.periodic.submit_scheduled_job"
    assert json.loads(task.kwargs) == {"kind": "count_primes", "params": {"limit": 5000}, "owner": "alice",
                                       "catch_up": "skip"}
    assert (task.interval.every, task.interval.period, task.enabled) == (60, IntervalSchedule.SECONDS, True)
    assert PeriodicTasks.last_change() is not None  # beat sees it without a restart


def test_a_crontab_schedule_keeps_its_time_zone(user):
    task = create(user, every_seconds=None, crontab="30 2 * * 1-5", crontab_timezone="Europe/Berlin")
    cron = task.crontab
    assert (cron.minute, cron.hour, cron.day_of_month, cron.month_of_year, cron.day_of_week) == (
        "30", "2", "*", "*", "1-5")
    assert str(cron.timezone) == "Europe/Berlin"
    assert task.interval is None


@pytest.mark.parametrize("fields, loc", [
    ({"kind": "no_such_kind"}, ["kind"]),
    ({"params": {"limit": 1}}, ["params", "limit"]),
    ({"params": {"colour": "red"}}, ["params", "colour"]),
    ({"every_seconds": None}, ["every_seconds"]),
    ({"crontab": "* * * * *"}, ["every_seconds"]),
    ({"every_seconds": 0}, ["every_seconds"]),
    ({"every_seconds": None, "crontab": "61 * * * *"}, ["crontab"]),
    ({"every_seconds": None, "crontab": "* * *"}, ["crontab"]),
    ({"every_seconds": None, "crontab": "* * * * 7"}, ["crontab"]),
    ({"every_seconds": None, "crontab": "0 9 * * *", "crontab_timezone": "Mars/Olympus"}, ["crontab_timezone"]),
    ({"catch_up": "always"}, ["catch_up"]),
    ({"name": ""}, ["name"]),
])
def test_bad_input_is_named_and_nothing_is_written(user, fields, loc):
    with pytest.raises(services.JobInputError) as raised:
        create(user, **fields)
    assert loc in [e["loc"] for e in raised.value.errors]
    assert not PeriodicTask.objects.exists()


def test_a_day_that_never_occurs_is_a_schedule_that_never_runs(user):
    task = create(user, every_seconds=None, crontab="0 0 30 2 *")
    info = selectors.schedule_get(user=user, schedule_id=task.pk)
    assert info.crontab == "0 0 30 2 *" and info.next_run_at is None


def test_names_are_unique(user):
    create(user)
    with pytest.raises(services.ScheduleNameTaken):
        create(user)


def test_users_schedule_jobs_as_themselves_and_staff_with_the_permission_as_anyone(user, other_user, staff_user,
                                                                                   manager):
    with pytest.raises(services.NotPermitted):
        create(user, run_as="bob")
    with pytest.raises(services.NotPermitted):
        create(staff_user, run_as="alice")  # staff, without django-celery-beat's add permission
    task = create(manager, run_as="alice")
    assert json.loads(task.kwargs)["owner"] == "alice"
    with pytest.raises(services.JobInputError) as raised:
        create(manager, name="other", run_as="nobody")
    assert raised.value.errors[0]["loc"] == ["run_as"]


# --- When it runs next --------------------------------------------------------------------


def test_an_interval_runs_one_period_after_its_last_run(user):
    task = create(user, every_seconds=3600)
    task.last_run_at = at("2026-03-08T06:30:00")
    assert schedules.next_run_at(task, last_run=task.last_run_at, now=at("2026-03-08T07:00:00")) == at(
        "2026-03-08T07:30:00")


def test_a_schedule_never_run_counts_from_when_it_was_saved_as_beat_does(user):
    task = create(user, every_seconds=600)
    assert schedules.next_run_at(task, last_run=None, now=timezone.now()) == task.date_changed + timedelta(
        seconds=600)


def test_an_hourly_interval_across_the_spring_change_in_new_york_is_one_real_hour(user):
    """01:30 EST, then 03:30 EDT: the clocks skip 02:00-03:00 on 8 March 2026."""
    task = create(user, every_seconds=3600)
    last = at("2026-03-08T01:30:00", NEW_YORK)
    nxt = schedules.next_run_at(task, last_run=last, now=last)
    assert nxt.astimezone(UTC) - last.astimezone(UTC) == timedelta(hours=1)
    shown = local_time(nxt, NEW_YORK)
    assert shown.local == "2026-03-08 03:30:00 EDT"
    assert shown.utc == "2026-03-08 07:30:00 UTC"


def test_a_utc_crontab_moves_by_an_hour_in_new_york_when_its_clocks_change(user):
    task = create(user, every_seconds=None, crontab="0 12 * * *")
    before = schedules.next_run_at(task, last_run=at("2026-03-07T12:00:00"), now=at("2026-03-07T13:00:00"))
    after = schedules.next_run_at(task, last_run=at("2026-03-08T12:00:00"), now=at("2026-03-08T13:00:00"))
    assert (before, after) == (at("2026-03-08T12:00:00"), at("2026-03-09T12:00:00"))
    assert local_time(at("2026-03-07T12:00:00"), NEW_YORK).local == "2026-03-07 07:00:00 EST"
    assert local_time(after, NEW_YORK).local == "2026-03-09 08:00:00 EDT"


def test_a_berlin_crontab_keeps_berlin_time_across_the_spring_change(user):
    """09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer (29 March 2026)."""
    task = create(user, every_seconds=None, crontab="0 9 * * *", crontab_timezone="Europe/Berlin")
    last = at("2026-03-28T09:00:00", BERLIN)
    nxt = schedules.next_run_at(task, last_run=last, now=last + timedelta(minutes=5))
    assert nxt == at("2026-03-29T07:00:00")
    assert local_time(nxt, BERLIN).local == "2026-03-29 09:00:00 CEST"
    assert local_time(nxt, NEW_YORK).local == "2026-03-29 03:00:00 EDT"


def test_a_time_the_spring_change_skips_runs_an_hour_later_that_day(user):
    task = create(user, every_seconds=None, crontab="30 2 * * *", crontab_timezone="Europe/Berlin")
    last = at("2026-03-28T02:30:00", BERLIN)
    nxt = schedules.next_run_at(task, last_run=last, now=last)
    assert local_time(nxt, BERLIN).local == "2026-03-29 03:30:00 CEST"
    following = schedules.next_run_at(task, last_run=nxt, now=nxt)
    assert local_time(following, BERLIN).local == "2026-03-30 02:30:00 CEST"


def test_a_time_the_autumn_change_repeats_runs_once(user):
    task = create(user, every_seconds=None, crontab="30 1 * * *", crontab_timezone="America/New_York")
    nxt = schedules.next_run_at(task, last_run=at("2026-10-31T12:00:00"), now=at("2026-10-31T12:00:00"))
    assert local_time(nxt, NEW_YORK).local == "2026-11-01 01:30:00 EDT"
    following = schedules.next_run_at(task, last_run=nxt, now=nxt)
    assert local_time(following, NEW_YORK).local == "2026-11-02 01:30:00 EST"


def test_a_paused_schedule_has_no_next_run(user):
    task = create(user, enabled=False)
    assert selectors.schedule_get(user=user, schedule_id=task.pk).next_run_at is None


# --- Missed runs and the catch-up policy --------------------------------------------------


def left_for(task, *, last_run_at, sent_at=None):
    """As a beat that stopped leaves a schedule: its last sync wrote last_run_at (and saved the row then)."""
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=last_run_at, date_changed=last_run_at)
    if sent_at is not None:
        counters.record_schedule_sent(task.name, sent_at.timestamp())


def test_beat_starting_counts_the_runs_missed_and_skip_waits_for_the_next_regular_time(user):
    task = create(user, every_seconds=60, catch_up="skip")
    now = timezone.now()
    left_for(task, last_run_at=now - timedelta(seconds=60 * 10 + 15))
    found = services.schedules_catch_up(now=now)
    assert [(m.name, m.missed, m.policy) for m in found] == [("primes", 10, "skip")]
    task.refresh_from_db()
    # The last missed time, so that the schedule keeps its rhythm: the next run is 45 s from now, not at once.
    assert task.last_run_at == now - timedelta(seconds=15)
    info = selectors.schedule_get(user=user, schedule_id=task.pk)
    assert info.missed_runs == 10 and info.next_run_at == now + timedelta(seconds=45)
    missed = selectors.schedule_runs(user=user, schedule=info).missed
    assert [(m["missed"], m["policy"]) for m in missed] == [(10, "skip")]


def test_run_once_leaves_the_last_run_so_that_beat_sends_one_at_once(user):
    task = create(user, every_seconds=60, catch_up="once")
    now = timezone.now()
    last = now - timedelta(minutes=30)
    left_for(task, last_run_at=last)
    assert services.schedules_catch_up(now=now)[0].missed == 30
    task.refresh_from_db()
    assert task.last_run_at == last
    is_due, _ = task.schedule.is_due(last)
    assert is_due  # and once sent, Celery counts the next from then: one run, not thirty


def test_a_crontab_counts_each_time_it_missed(user):
    task = create(user, every_seconds=None, crontab="0 * * * *", catch_up="skip")
    now = at("2026-06-01T12:30:00")
    left_for(task, last_run_at=at("2026-06-01T08:00:00"))
    assert services.schedules_catch_up(now=now)[0].missed == 4  # 09:00, 10:00, 11:00, 12:00
    task.refresh_from_db()
    assert task.last_run_at == now
    assert schedules.next_run_at(task, last_run=task.last_run_at, now=now) == at("2026-06-01T13:00:00")


def test_the_last_send_kept_in_redis_counts_over_the_databases_older_one(user):
    """The database's last_run_at lags by up to sync_every seconds; a quick restart misses nothing."""
    task = create(user, every_seconds=10, catch_up="skip")
    now = timezone.now()
    left_for(task, last_run_at=now - timedelta(seconds=28), sent_at=now - timedelta(seconds=3))
    assert services.schedules_catch_up(now=now) == []
    task.refresh_from_db()
    assert abs(task.last_run_at - (now - timedelta(seconds=3))) < timedelta(milliseconds=1)


def test_a_schedule_beat_sent_but_never_wrote_back_counts_from_its_last_send(user):
    task = create(user, every_seconds=10, catch_up="skip")
    now = timezone.now()
    PeriodicTask.objects.filter(pk=task.pk).update(date_changed=now - timedelta(seconds=60))
    counters.record_schedule_sent(task.name, (now - timedelta(seconds=35)).timestamp())
    assert services.schedules_catch_up(now=now)[0].missed == 3
    assert abs(PeriodicTask.objects.get().last_run_at - (now - timedelta(seconds=5))) < timedelta(milliseconds=1)


def test_paused_and_platform_schedules_are_not_caught_up(user):
    paused = create(user, name="paused", every_seconds=60, enabled=False)
    platform = PeriodicTask.objects.create(name="stats", task="jobs.periodic.aggregate_job_stats",
                                           interval=paused.interval)
    now = timezone.now()
    for task in (paused, platform):
        left_for(task, last_run_at=now - timedelta(hours=1))
    assert services.schedules_catch_up(now=now) == []
    assert counters.schedule_counts(["paused", "stats"]) == {
        "paused": {"sent": None, "missed": 0, "refused": 0}, "stats": {"sent": None, "missed": 0, "refused": 0}}


def test_the_beat_that_takes_the_lock_catches_up_first(user, transactional_db):
    from celery import current_app

    from jobs.beat import SingleBeatScheduler

    task = create(user, every_seconds=60, catch_up="skip")
    left_for(task, last_run_at=timezone.now() - timedelta(minutes=5))
    beat = SingleBeatScheduler(app=current_app)
    try:
        assert beat._hold_lock()
        assert counters.schedule_counts(["primes"])["primes"]["missed"] == 5
        beat.tick()
        assert beat.schedule["primes"].last_run_at > timezone.now() - timedelta(seconds=61)
    finally:
        beat.close()


# --- Run now, pause, resume ----------------------------------------------------------------


def test_run_now_submits_one_job_naming_the_schedule_as_its_owner(user, manager, redis_server,
                                                                 django_capture_on_commit_callbacks):
    task = create(user)
    with django_capture_on_commit_callbacks(execute=True):
        job = services.schedule_run_now(user=manager, task=task)
    assert (job.kind, job.params, job.owner, job.schedule_name, job.status) == (
        "count_primes", {"limit": 5000}, user, "primes", Job.Status.QUEUED)
    assert selectors.schedule_run_trigger(job) == "run now"


def test_others_may_not_run_pause_or_resume_a_schedule(user, other_user, staff_user):
    task = create(user)
    for who in (other_user, staff_user):
        for action in (services.schedule_run_now, services.schedule_pause, services.schedule_resume):
            with pytest.raises(services.NotPermitted):
                action(user=who, task=task)
    assert not Job.objects.exists() and PeriodicTask.objects.get().enabled


def test_run_now_is_refused_by_back_pressure_with_nothing_written(user, settings, redis_server):
    settings.JOBS_QUEUE_LIMIT = 2
    redis_server.client().rpush("cpu", b"{}", b"{}")
    with pytest.raises(services.QueueFull):
        services.schedule_run_now(user=user, task=create(user))
    assert not Job.objects.exists()


def test_run_now_of_a_schedule_whose_owner_is_gone_says_why(user, manager):
    task = create(user)
    user.is_active = False
    user.save()
    with pytest.raises(services.JobStateError, match="not an active user"):
        services.schedule_run_now(user=manager, task=task)


def test_pause_and_resume_tell_beat_and_a_resumed_schedule_counts_from_its_resume(user):
    task = create(user, every_seconds=300)
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=timezone.now() - timedelta(hours=2))
    counters.record_schedule_sent(task.name, (timezone.now() - timedelta(hours=1)).timestamp())
    stamp = PeriodicTasks.last_change()
    paused = services.schedule_pause(user=user, task=task)
    assert paused.enabled is False and paused.last_run_at is None
    assert PeriodicTasks.last_change() > stamp
    resumed = services.schedule_resume(user=user, task=paused)
    assert resumed.enabled
    # The paused hours are not missed runs, and the sends before the pause are not where it starts from.
    assert services.schedules_catch_up() == []
    info = selectors.schedule_get(user=user, schedule_id=task.pk)
    assert info.next_run_at == resumed.date_changed + timedelta(seconds=300)


def test_each_action_on_a_schedule_is_in_the_audit_log_and_a_refused_one_is_not(user, manager, settings,
                                                                                 redis_server):
    from jobs.models import AuditEntry

    task = create(manager, run_as="alice")
    job = services.schedule_run_now(user=user, task=task)
    services.schedule_pause(user=manager, task=task)
    services.schedule_pause(user=manager, task=PeriodicTask.objects.get())  # already paused: nothing to record
    services.schedule_resume(user=user, task=PeriodicTask.objects.get())
    settings.JOBS_QUEUE_LIMIT = 1
    redis_server.client().rpush("cpu", b"{}", b"{}")
    admission.reset()
    with pytest.raises(services.QueueFull):
        services.schedule_run_now(user=user, task=task)
    entries = list(AuditEntry.objects.order_by("id").values_list("action", "actor_name", "target", "detail"))
    assert entries == [
        ("schedule_create", "manager", "schedule:primes", {"kind": "count_primes", "run_as": "alice"}),
        ("schedule_run", "alice", "schedule:primes", {"job": str(job.id)}),
        ("schedule_pause", "manager", "schedule:primes", {}),
        ("schedule_resume", "alice", "schedule:primes", {}),
    ]


# --- Runs, and what others see --------------------------------------------------------------


def test_runs_list_the_jobs_newest_first_and_the_refused_and_invalid_runs(user, settings, redis_server):
    task = create(user, every_seconds=30)
    services.job_submit_scheduled(schedule_name="primes", kind="count_primes", params={"limit": 5000},
                                  owner="alice", run_id="beat-1")
    services.schedule_run_now(user=user, task=task)
    settings.JOBS_QUEUE_LIMIT = 1
    redis_server.client().rpush("cpu", b"{}")
    admission.reset()  # forget the depth read before the queue filled
    assert services.job_submit_scheduled(schedule_name="primes", kind="count_primes", params={}, owner="alice",
                                         run_id="beat-2") == "refused"
    assert services.job_submit_scheduled(schedule_name="primes", kind="count_primes", params={}, owner="gone",
                                         run_id="beat-3") == "invalid"
    info = selectors.schedule_get(user=user, schedule_id=task.pk)
    runs = selectors.schedule_runs(user=user, schedule=info)
    assert [selectors.schedule_run_trigger(j) for j in runs.jobs] == ["run now", "beat"]
    assert len(runs.refused) == 1 and "full" in runs.refused[0]["reason"]
    assert len(runs.invalid) == 1 and "gone" in runs.invalid[0]["reason"]
    assert info.refused_runs == 1


def test_users_see_their_own_schedules_and_staff_see_all(user, other_user, staff_user, manager):
    create(user, name="alice's")
    create(manager, name="bob's", run_as="bob")
    PeriodicTask.objects.create(name="housekeeping", task="jobs.periodic.recover_lost_jobs",
                                interval=IntervalSchedule.objects.first())
    assert [s.name for s in selectors.schedule_list(user=user)] == ["alice's"]
    assert [s.name for s in selectors.schedule_list(user=other_user)] == ["bob's"]
    assert [s.name for s in selectors.schedule_list(user=staff_user)] == ["alice's", "bob's"]
    assert [s.may_manage for s in selectors.schedule_list(user=staff_user)] == [False, False]
    assert [s.may_manage for s in selectors.schedule_list(user=manager)] == [True, True]


# --- The API ------------------------------------------------------------------------------------


def test_api_create_list_get_and_runs(api, user):
    response = api.post("/api/schedules", {"name": "nightly", "kind": "count_primes", "params": {"limit": 100},
                                           "crontab": "30 2 * * *", "crontab_timezone": "Europe/Berlin",
                                           "catch_up": "skip"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert {k: body[k] for k in ("name", "kind", "params", "run_as", "enabled", "every_seconds", "crontab",
                                 "crontab_timezone", "catch_up", "missed_runs", "refused_runs", "may_manage")} == {
        "name": "nightly", "kind": "count_primes", "params": {"limit": 100}, "run_as": "alice", "enabled": True,
        "every_seconds": None, "crontab": "30 2 * * *", "crontab_timezone": "Europe/Berlin", "catch_up": "skip",
        "missed_runs": 0, "refused_runs": 0, "may_manage": True}
    nxt = datetime.fromisoformat(body["next_run_at"]).astimezone(BERLIN)
    assert (nxt.hour, nxt.minute) == (2, 30) or (nxt.month, nxt.day) in ((3, 29), (3, 28))  # 02:30 there
    assert [s["name"] for s in api.get("/api/schedules").json()] == ["nightly"]
    assert api.get(f"/api/schedules/{body['id']}").json()["id"] == body["id"]
    runs = api.get(f"/api/schedules/{body['id']}/runs").json()
    assert runs["schedule"]["id"] == body["id"] and runs["jobs"] == runs["refused"] == runs["missed"] == []


def test_api_run_now_answers_202_with_the_job_and_503_when_the_queue_is_full(api, user, settings, redis_server):
    schedule = api.post("/api/schedules", {"name": "s", "kind": "noop", "every_seconds": 3600}).json()
    response = api.post(f"/api/schedules/{schedule['id']}/run")
    assert response.status_code == 202, response.content
    assert response.json()["schedule_name"] == "s" and response.json()["owner"] == "alice"
    runs = api.get(f"/api/schedules/{schedule['id']}/runs").json()
    assert [(j["id"], j["trigger"], j["status"]) for j in runs["jobs"]] == [(response.json()["id"], "run now",
                                                                              "queued")]
    settings.JOBS_QUEUE_LIMIT = 1
    redis_server.client().rpush("default", b"{}")
    admission.reset()
    refused = api.post(f"/api/schedules/{schedule['id']}/run")
    assert refused.status_code == 503 and refused["Retry-After"]
    assert refused.json()["error"] == "queue_full"


def test_api_run_now_of_an_inline_kind_answers_200_with_its_result(api):
    schedule = api.post("/api/schedules", {"name": "w", "kind": "word_count", "params": {"text": "a b"},
                                           "every_seconds": 60}).json()
    response = api.post(f"/api/schedules/{schedule['id']}/run")
    assert response.status_code == 200 and response.json()["result"]["words"] == 2


def test_api_pause_and_resume(api):
    schedule = api.post("/api/schedules", {"name": "s", "kind": "noop", "every_seconds": 60}).json()
    paused = api.post(f"/api/schedules/{schedule['id']}/pause")
    assert paused.status_code == 200 and paused.json()["enabled"] is False and paused.json()["next_run_at"] is None
    resumed = api.post(f"/api/schedules/{schedule['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["enabled"] is True and resumed.json()["next_run_at"]


def test_api_another_users_schedule_is_404_and_staff_without_the_permission_get_403(api_for, user, other_user,
                                                                                  staff_user, manager):
    schedule = api_for(user).post("/api/schedules", {"name": "s", "kind": "noop", "every_seconds": 60}).json()
    bob, staff, boss = api_for(other_user), api_for(staff_user), api_for(manager)
    for path in ("", "/runs"):
        assert bob.get(f"/api/schedules/{schedule['id']}{path}").status_code == 404
        assert staff.get(f"/api/schedules/{schedule['id']}{path}").status_code == 200
    for action in ("run", "pause", "resume"):
        assert bob.post(f"/api/schedules/{schedule['id']}/{action}").status_code == 404
        forbidden = staff.post(f"/api/schedules/{schedule['id']}/{action}")
        assert forbidden.status_code == 403 and "permission" in forbidden.json()["detail"]
    assert not Job.objects.exists() and PeriodicTask.objects.get().enabled
    assert boss.post(f"/api/schedules/{schedule['id']}/pause").json()["enabled"] is False
    assert boss.post(f"/api/schedules/{schedule['id']}/run").status_code == 202
    assert bob.get("/api/schedules").json() == []


def test_api_scheduling_as_another_user_needs_the_permission(api_for, user, other_user, manager):
    body = {"name": "for bob", "kind": "noop", "every_seconds": 60, "run_as": "bob"}
    assert api_for(user).post("/api/schedules", body).status_code == 403
    created = api_for(manager).post("/api/schedules", body)
    assert created.status_code == 201 and created.json()["run_as"] == "bob"


@pytest.mark.parametrize("body, loc", [
    ({"kind": "noop"}, ["body", "every_seconds"]),
    ({"kind": "noop", "every_seconds": 60, "crontab": "* * * * *"}, ["body", "every_seconds"]),
    ({"kind": "noop", "crontab": "60 * * * *"}, ["body", "payload", "crontab"]),
    ({"kind": "noop", "every_seconds": 60, "crontab_timezone": "Nowhere"}, ["body", "payload", "crontab_timezone"]),
    ({"kind": "noop", "every_seconds": 60, "every": 5}, ["body", "payload", "every"]),
    ({"kind": "nope", "every_seconds": 60}, ["body", "kind"]),
    ({"kind": "count_primes", "params": {"limit": 0}, "every_seconds": 60}, ["body", "params", "limit"]),
    ({"kind": "noop", "every_seconds": "60"}, ["body", "payload", "every_seconds"]),
])
def test_api_bad_input_is_422_naming_the_field(api, body, loc):
    response = api.post("/api/schedules", {"name": "s", **body})
    assert response.status_code == 422, response.content
    assert loc in [e["loc"] for e in response.json()["detail"]]
    assert not PeriodicTask.objects.exists()


def test_api_a_taken_name_is_409(api):
    body = {"name": "s", "kind": "noop", "every_seconds": 60}
    assert api.post("/api/schedules", body).status_code == 201
    assert api.post("/api/schedules", body).status_code == 409


def test_api_schedules_need_a_token(api_for, user):
    anonymous = api_for(None)
    assert anonymous.get("/api/schedules").status_code == 401
    assert anonymous.post("/api/schedules", {"name": "s", "kind": "noop", "every_seconds": 60}).status_code == 401
    assert anonymous.post("/api/schedules/1/run").status_code == 401


def test_api_schema_declares_each_schedule_answer(client):
    paths = client.get("/api/openapi.json").json()["paths"]
    assert set(paths["/api/schedules"]["post"]["responses"]) >= {"201", "403", "409", "422", "401"}
    assert set(paths["/api/schedules/{schedule_id}/run"]["post"]["responses"]) >= {"200", "202", "403", "404", "409",
                                                                                   "503"}
    for action in ("pause", "resume"):
        assert set(paths[f"/api/schedules/{{schedule_id}}/{action}"]["post"]["responses"]) >= {"200", "403", "404"}
    assert set(paths["/api/schedules/{schedule_id}/runs"]["get"]["responses"]) >= {"200", "404"}


def test_the_crontab_pattern_accepts_only_what_celery_reads():
    from celery.schedules import crontab_parser
    from hypothesis import given, settings as hypothesis_settings, strategies as st

    from jobs.web.api import CRONTAB_PATTERN

    @hypothesis_settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.from_regex(CRONTAB_PATTERN, fullmatch=True))
    def parses(text):
        for value, (size, first) in zip(text.split(" "), schedules.CRONTAB_RANGES.values()):
            crontab_parser(size, first).parse(value)

    parses()


# --- The dashboard -------------------------------------------------------------------------


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


def test_the_schedules_page_lists_them_with_times_in_the_users_zone(alice, user):
    task = create(user, every_seconds=3600)
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=at("2026-01-15T12:00:00"))
    assert alice.post(reverse("jobs:set_time_zone"), {"time_zone": "Asia/Tokyo"}).status_code == 204
    page = alice.get(reverse("jobs:schedules")).content.decode()
    assert "primes" in page and "every hour" in page and "Asia/Tokyo" in page
    assert '<time datetime="2026-01-15T12:00:00+00:00" title="2026-01-15 12:00:00 UTC">2026-01-15 21:00:00 JST' in page
    assert 'data-confirm="Run “primes” now?' in page and 'data-confirm="Pause “primes”?' in page


def test_an_unknown_time_zone_is_refused_and_utc_stays(alice):
    assert alice.post(reverse("jobs:set_time_zone"), {"time_zone": "../../etc"}).status_code == 422
    assert "Times are in <strong>UTC</strong>" in alice.get(reverse("jobs:schedules")).content.decode()


def test_the_new_schedule_form_creates_one_with_the_kinds_typed_parameters(alice, user):
    page = alice.get(reverse("jobs:schedule_new") + "?kind=count_primes").content.decode()
    assert 'name="params-limit"' in page and 'name="run_as"' not in page
    response = alice.post(reverse("jobs:schedule_new") + "?kind=count_primes", {
        "name": "primes daily", "timing": "crontab", "crontab": "0 9 * * 1-5", "crontab_timezone": "Europe/Berlin",
        "catch_up": "skip", "params-limit": "7000"})
    task = PeriodicTask.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("jobs:schedule_detail", args=[task.pk])
    assert json.loads(task.kwargs) == {"kind": "count_primes", "params": {"limit": 7000}, "owner": "alice",
                                       "catch_up": "skip"}
    assert str(task.crontab.timezone) == "Europe/Berlin"


def test_the_new_schedule_form_shows_errors_next_to_their_fields(alice):
    response = alice.post(reverse("jobs:schedule_new") + "?kind=count_primes", {
        "name": "x", "timing": "crontab", "crontab": "99 * * * *", "crontab_timezone": "UTC", "catch_up": "once",
        "params-limit": "1"})
    assert response.status_code == 422
    page = response.content.decode()
    assert re.search(r'id="field-crontab">.*?not a valid crontab', page, re.S)
    assert re.search(r'id="field-params-limit">.*?greater than or equal to 2', page, re.S)
    assert not PeriodicTask.objects.exists()


def test_staff_with_the_permission_may_choose_whom_it_runs_as(client, manager, user):
    client.force_login(manager)
    page = client.get(reverse("jobs:schedule_new") + "?kind=noop").content.decode()
    assert '<option value="alice">alice</option>' in page
    client.post(reverse("jobs:schedule_new") + "?kind=noop", {"name": "n", "timing": "interval",
                                                              "every_seconds": "60", "crontab_timezone": "UTC",
                                                              "catch_up": "once", "run_as": "alice"})
    assert json.loads(PeriodicTask.objects.get().kwargs)["owner"] == "alice"


def test_the_detail_page_shows_runs_and_the_actions_work(alice, user, redis_server):
    task = create(user, every_seconds=60)
    url = reverse("jobs:schedule_detail", args=[task.pk])
    assert "No runs yet." in alice.get(url).content.decode()
    response = alice.post(reverse("jobs:schedule_run", args=[task.pk]), {"next": url})
    assert response.status_code == 302 and response["Location"] == url
    page = alice.get(url).content.decode()
    job = Job.objects.get()
    assert str(job.id)[:8] in page and "run now" in page
    alice.post(reverse("jobs:schedule_pause", args=[task.pk]), {"next": "https://elsewhere.example/"})
    assert PeriodicTask.objects.get().enabled is False
    assert "paused" in alice.get(url).content.decode()
    alice.post(reverse("jobs:schedule_resume", args=[task.pk]))
    assert PeriodicTask.objects.get().enabled is True
    live = alice.get(url, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="schedule-live").content.decode()
    assert live.startswith('<div id="schedule-live"')


def test_another_users_schedule_does_not_exist_on_the_dashboard(client, user, other_user, staff_user):
    task = create(user)
    client.force_login(other_user)
    assert client.get(reverse("jobs:schedule_detail", args=[task.pk])).status_code == 404
    assert client.post(reverse("jobs:schedule_run", args=[task.pk])).status_code == 404
    client.force_login(staff_user)
    assert client.get(reverse("jobs:schedule_detail", args=[task.pk])).status_code == 200
    assert client.post(reverse("jobs:schedule_pause", args=[task.pk])).status_code == 403
    assert PeriodicTask.objects.get().enabled


def test_the_schedule_pages_need_a_login(client):
    for url in (reverse("jobs:schedules"), reverse("jobs:schedule_new"), reverse("jobs:schedule_detail", args=[1])):
        assert client.get(url).status_code == 302
    assert client.post(reverse("jobs:set_time_zone"), {"time_zone": "UTC"}).status_code == 302


def test_the_schedule_templates_cause_no_queries(client, manager, user, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from jobs.web import views

    rendered = []

    def render_counting(*args, **kwargs):
        with CaptureQueriesContext(connection) as queries:
            response = real_render(*args, **kwargs)
        rendered.append((args[1], len(queries)))
        return response

    real_render = views.render
    monkeypatch.setattr(views, "render", render_counting)
    task = create(manager, run_as="alice")
    services.schedule_run_now(user=manager, task=task)
    client.force_login(manager)
    client.get(reverse("jobs:schedules"))
    client.get(reverse("jobs:schedule_detail", args=[task.pk]))
    client.get(reverse("jobs:schedule_new") + "?kind=count_primes")
    assert rendered == [("jobs/schedules.html", 0), ("jobs/schedule_detail.html", 0), ("jobs/schedule_new.html", 0)]
