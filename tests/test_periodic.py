"""Periodic work: installed schedules, user schedules (admin form, back pressure), recovery and retention rules, the beat lock."""
import json
from datetime import timedelta

import pytest
from celery import current_app
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from jobs import schedules, selectors, services, tasks
from jobs.infra.broker import broker_list_names
from jobs.beat import LOCK_KEY, SingleBeatScheduler
from jobs.models import Job, JobHourRollup, JobMinuteRollup
from jobs.tasks import SCHEDULED_JOB_TASK

pytestmark = pytest.mark.django_db

S = Job.Status


@pytest.fixture
def admin_client(client, django_user_model):
    admin = django_user_model.objects.create_superuser(username="root", password="root-password-1")
    client.force_login(admin)
    return client


# --- Platform schedules ---------------------------------------------------------------


def test_install_schedules_creates_each_once_with_its_reason():
    first = schedules.install_schedules()
    assert all(created for _, created in first)
    assert not any(created for _, created in schedules.install_schedules())
    tasks = {t.name: t for t in PeriodicTask.objects.all()}
    assert set(tasks) == set(schedules.PLATFORM_SCHEDULES)
    aggregate = tasks["Aggregate job statistics"]
    assert aggregate.task == "jobs.periodic.aggregate_job_stats"
    assert aggregate.interval.every == 30 and aggregate.interval.period == IntervalSchedule.SECONDS
    assert all("Period:" in t.description for t in tasks.values())
    for name in ("Publish due scheduled jobs", "Aggregate job statistics", "Recover lost jobs",
                 "Apply retention"):
        assert tasks[name].task in current_app.tasks


def test_install_schedules_keeps_what_staff_changed():
    schedules.install_schedules()
    PeriodicTask.objects.filter(name="Aggregate job statistics").update(enabled=False)
    schedules.install_schedules()
    assert PeriodicTask.objects.get(name="Aggregate job statistics").enabled is False


# --- User schedules: each run through the submit service ------------------------------


def test_a_scheduled_run_becomes_a_job_naming_its_schedule(user, django_capture_on_commit_callbacks, redis_server):
    with django_capture_on_commit_callbacks(execute=True):
        outcome = services.job_submit_scheduled(schedule_name="nightly primes", kind="count_primes",
                                               params={"limit": 5000}, owner=user.username, run_id="run-1")
    job = Job.objects.get()
    assert outcome == f"submitted {job.id}"
    assert (job.kind, job.params, job.owner, job.schedule_name) == (
        "count_primes", {"limit": 5000}, user, "nightly primes")
    assert any(json.loads(m)["headers"]["id"] == str(job.id)
               for name in broker_list_names("cpu") for m in redis_server.client().lrange(name, 0, -1))
    assert selectors.periodic_counters()["events"]["schedule_submitted"] == 1


def test_a_redelivered_run_is_one_job():
    for _ in range(2):
        services.job_submit_scheduled(schedule_name="s", kind="noop", params={}, owner=None, run_id="same-message")
    job = Job.objects.get()
    assert job.owner is None and job.schedule_name == "s"


def test_a_run_refused_by_back_pressure_is_logged_and_counted(settings, redis_server, caplog):
    settings.JOBS_QUEUE_LIMIT = 3
    redis_server.client().rpush("cpu", *[b"{}"] * 3)
    outcome = services.job_submit_scheduled(schedule_name="nightly primes", kind="count_primes", params={},
                                           owner=None, run_id="run-2")
    assert outcome == "refused"
    assert not Job.objects.exists()
    counters = selectors.periodic_counters()
    assert counters["events"]["schedule_refused"] == 1
    assert counters["refused_by_schedule"] == {"nightly primes": 1}
    assert any("scheduled run refused" in r.message and "nightly primes" in r.message for r in caplog.records)


def test_inline_kinds_are_not_refused_by_a_full_queue(settings, redis_server):
    settings.JOBS_QUEUE_LIMIT = 1
    redis_server.client().rpush("default", b"{}")
    outcome = services.job_submit_scheduled(schedule_name="counts", kind="word_count", params={"text": "a b a"},
                                           owner=None, run_id="run-3")
    assert outcome.startswith("submitted")
    assert Job.objects.get().status == S.SUCCEEDED


@pytest.mark.parametrize("kind, params, owner", [
    ("no_such_kind", {}, None),
    ("count_primes", {"limit": "many"}, None),
    ("noop", {}, "nobody-by-that-name"),
])
def test_a_run_that_cannot_be_submitted_is_counted_not_raised(kind, params, owner, caplog):
    assert services.job_submit_scheduled(schedule_name="broken", kind=kind, params=params, owner=owner,
                                        run_id=None) == "invalid"
    assert not Job.objects.exists()
    assert selectors.periodic_counters()["events"]["schedule_invalid"] == 1
    assert any("scheduled run skipped" in r.message for r in caplog.records)


def test_the_task_reads_the_schedule_name_from_beats_header():
    result = tasks.submit_scheduled_job.apply(kwargs={"kind": "noop", "params": {}},
                                                 headers={"periodic_task_name": "every minute"})
    assert result.get().startswith("submitted")
    assert Job.objects.get().schedule_name == "every minute"


# --- The schedule admin -----------------------------------------------------------------


def schedule_form(**fields):
    interval, _ = IntervalSchedule.objects.get_or_create(every=10, period=IntervalSchedule.SECONDS)
    data = {
        "name": "primes every 10 s", "regtask": "", "task": "", "enabled": "on", "description": "",
        "interval": str(interval.pk), "crontab": "", "solar": "", "clocked": "", "start_time_0": "",
        "start_time_1": "", "args": "[]", "kwargs": "{}", "expires_0": "", "expires_1": "", "expire_seconds": "",
        "queue": "", "exchange": "", "routing_key": "", "priority": "", "headers": "{}",
        "job_kind": "count_primes", "job_params": '{"limit": 5000}', "run_as": "",
    }
    data.update(fields)
    return data


ADD_URL = "/admin/django_celery_beat/periodictask/add/"


def test_admin_saves_a_job_schedule_with_checked_parameters(admin_client, user):
    response = admin_client.post(ADD_URL, schedule_form(run_as=str(user.pk)))
    assert response.status_code == 302, response.content.decode()[-3000:]
    task = PeriodicTask.objects.get(name="primes every 10 s")
    assert task.task == SCHEDULED_JOB_TASK
    assert json.loads(task.kwargs) == {"kind": "count_primes", "params": {"limit": 5000}, "owner": "alice"}
    edit = admin_client.get(f"/admin/django_celery_beat/periodictask/{task.pk}/change/").content.decode()
    assert '<option value="count_primes" selected>' in edit and "5000" in edit


@pytest.mark.parametrize("fields, message", [
    ({"job_params": '{"limit": 1}'}, "limit: Input should be greater than or equal to 2"),
    ({"job_params": '{"limit": 5000, "colour": "red"}'}, "colour: Extra inputs are not permitted"),
    ({"job_params": '{"limit": '}, "Enter a valid JSON"),
    ({"job_params": '[1, 2]'}, "must be an object"),
    ({"job_kind": "", "regtask": SCHEDULED_JOB_TASK}, "Choose the job kind each run submits"),
    ({"job_kind": "", "task": "jobs.count_primes"}, "runs one existing job"),
])
def test_admin_refuses_a_schedule_with_bad_parameters(admin_client, fields, message):
    response = admin_client.post(ADD_URL, schedule_form(**fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not PeriodicTask.objects.exists()


def test_admin_offers_job_kinds_by_name_and_hides_their_raw_tasks(admin_client):
    page = admin_client.get(ADD_URL).content.decode()
    assert '<option value="count_primes">Count primes (count_primes)</option>' in page
    assert 'value="jobs.count_primes"' not in page
    assert f'value="{SCHEDULED_JOB_TASK}"' in page


def test_admin_still_schedules_plain_tasks(admin_client):
    response = admin_client.post(ADD_URL, schedule_form(name="recover", job_kind="", job_params="",
                                                        regtask="jobs.periodic.recover_lost_jobs"))
    assert response.status_code == 302
    assert PeriodicTask.objects.get(name="recover").task == "jobs.periodic.recover_lost_jobs"


def test_rollups_are_read_only_in_the_admin(admin_client):
    JobMinuteRollup.objects.create(kind="noop", period_start=timezone.now().replace(second=0, microsecond=0),
                                   succeeded=3, started=3, run_sum=0.3, run_max=0.2, run_histogram={"31": 3})
    for model in ("jobminuterollup", "jobhourrollup", "rollupwatermark"):
        assert admin_client.get(f"/admin/jobs/{model}/").status_code == 200
        assert admin_client.get(f"/admin/jobs/{model}/add/").status_code == 403
    rollup = JobMinuteRollup.objects.get()
    page = admin_client.get(f"/admin/jobs/jobminuterollup/{rollup.pk}/change/")
    assert page.status_code == 200 and 'name="succeeded"' not in page.content.decode()
    assert admin_client.post(f"/admin/jobs/jobminuterollup/{rollup.pk}/delete/", {"post": "yes"}).status_code == 403


# --- Recovery and retention, the rules without a worker --------------------------------


def running_job(**fields):
    now = timezone.now()
    defaults = dict(kind="noop", status=S.RUNNING, attempts=1, attempt_limit=1, started_at=now - timedelta(hours=1),
                    published_at=now - timedelta(hours=1), lease_expires_at=now - timedelta(seconds=1),
                    worker="gone@host")
    return Job.objects.create(**{**defaults, **fields})


def test_a_running_job_past_its_lease_without_attempts_left_fails_clearly():
    job = running_job()
    counts = services.jobs_reclaim_lapsed()
    assert counts["stuck_failed"] == 1 and counts["stuck_retried"] == 0
    job.refresh_from_db()
    assert job.status == S.FAILED and "worker lost" in job.error and job.finished_at is not None
    assert TaskResult.objects.get(task_id=str(job.id)).status == "FAILURE"
    assert selectors.periodic_counters()["events"]["stuck_failed"] == 1


def test_a_running_job_within_its_lease_is_left_alone():
    job = running_job(lease_expires_at=timezone.now() + timedelta(minutes=5))
    counts = services.jobs_reclaim_lapsed()
    assert counts["stuck_retried"] == counts["stuck_failed"] == 0
    job.refresh_from_db()
    assert job.status == S.RUNNING


def test_a_queued_job_whose_message_is_there_is_not_republished(user, django_capture_on_commit_callbacks):
    from jobs import services

    with django_capture_on_commit_callbacks(execute=True):
        services.job_submit(user=user, kind="noop")
    assert services.recover_jobs(stale_after=0)["republished"] == 0


def test_retention_drops_old_minute_rollups_and_keeps_hourly_ones():
    old = (timezone.now() - timedelta(days=40)).replace(second=0, microsecond=0)
    recent = timezone.now().replace(second=0, microsecond=0)
    JobMinuteRollup.objects.create(kind="noop", period_start=old, succeeded=1)
    JobMinuteRollup.objects.create(kind="noop", period_start=recent, succeeded=1)
    JobHourRollup.objects.create(kind="noop", period_start=old.replace(minute=0), succeeded=1)
    services.delete_expired(days=30)
    assert list(JobMinuteRollup.objects.values_list("period_start", flat=True)) == [recent]
    assert JobHourRollup.objects.count() == 1


# --- The beat lock, in one process ------------------------------------------------------
# The database scheduler commits and closes connections as it reads: no test transaction around it.


@pytest.mark.django_db(transaction=True)
def test_only_the_beat_holding_the_lock_ticks(redis_server):
    first = SingleBeatScheduler(app=current_app)
    second = SingleBeatScheduler(app=current_app)
    try:
        assert first._hold_lock() is True
        assert second._hold_lock() is False
        assert second.tick() == second.standby_poll
        assert redis_server.client().pttl(LOCK_KEY) > 0
        first.close()
        assert second._hold_lock() is True
        assert first._hold_lock() is False
    finally:
        second.close()
    assert redis_server.client().get(LOCK_KEY) is None


@pytest.mark.django_db(transaction=True)
def test_a_beat_whose_lock_expired_and_was_taken_does_not_renew_it(redis_server):
    first = SingleBeatScheduler(app=current_app)
    assert first._hold_lock()
    redis_server.client().set(LOCK_KEY, b"another beat")  # as if ours expired and another took it
    assert first._hold_lock() is False
    first.close()
    assert redis_server.client().get(LOCK_KEY) == b"another beat"
