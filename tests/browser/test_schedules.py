"""The schedules pages in a real browser: create one, run it now, pause and resume it (each asking first), its
runs, refused and missed runs, all in the browser's time zone with UTC on hover, under the site's CSP."""
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from playwright.sync_api import expect

from jobs import services
from jobs.models import Job
from jobs.services import admission
from tests.browser.conftest import log_in, screenshot
from tests.browser.test_csp import Watch
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

LONG = 60_000


@pytest.fixture
def page_in(browser, live_server):
    """A page in a browser context of its own, in the given time zone (as the machine's clock shows it)."""
    contexts = []

    def open_page(zone: str):
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900},
                                      timezone_id=zone)
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def asked(page, action, *, accept: bool) -> str:
    """Click `action`'s button, answer the page's question, and return the question."""
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message),
                                        dialog.accept() if accept else dialog.dismiss()))
    action()
    wait_for(lambda: questions, timeout=10, message="the page to ask first")
    return questions[0]


def test_create_a_schedule_run_it_now_pause_and_resume_it(page_in, user, live_worker):
    page = page_in("America/New_York")
    watch = Watch(page)
    log_in(page, "alice", "alice-password-1")
    page.get_by_role("link", name="Schedules", exact=True).click()
    # The browser's zone is sent once, and the page shows times in it from then on.
    expect(page.locator("#time-zone-note")).to_contain_text("America/New_York")
    expect(page.get_by_text("No schedules yet.")).to_be_visible()
    screenshot(page, "40-schedules-empty")

    page.get_by_role("link", name="New schedule").click()
    # Choosing a kind brings its parameters' fields in place of the form's.
    page.get_by_label("Job kind").select_option("noop")
    expect(page.locator("#schedule-form-title")).to_have_text("No-op")
    expect(page.get_by_text("This kind takes no parameters.")).to_be_visible()
    page.get_by_label("Job kind").select_option("count_primes")
    expect(page.locator("#schedule-form-title")).to_have_text("Count primes")
    page.get_by_label("Name").fill("hourly primes")
    page.get_by_label("Every (seconds)").fill("3600")
    page.get_by_label("Limit").fill("30000")
    page.get_by_role("radio", name=re.compile("Skip: no run")).check()
    expect(page.get_by_label("Crontab time zone")).to_have_value("America/New_York")
    screenshot(page, "41-schedule-new")
    page.get_by_role("button", name="Create schedule").click()
    expect(page.get_by_role("heading", name="hourly primes")).to_be_visible()
    expect(page.get_by_text("No runs yet.")).to_be_visible()
    task = PeriodicTask.objects.get(name="hourly primes")
    assert '"catch_up": "skip"' in task.kwargs and '"limit": 30000' in task.kwargs

    # Next run: local time on the page, UTC on hover.
    next_run = page.locator("#schedule-live .status-line time")
    expect(next_run).to_have_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d E[SD]T$"))
    expect(next_run).to_have_attribute("title", re.compile(r"UTC$"))

    # Run now asks first: declining submits nothing.
    run_now = page.get_by_role("button", name="Run hourly primes now")
    question = asked(page, run_now.click, accept=False)
    assert "hourly primes" in question and "count_primes" in question
    page.wait_for_timeout(500)
    assert not Job.objects.exists()
    asked(page, run_now.click, accept=True)
    expect(page.get_by_text("ran now")).to_be_visible()
    rows = page.locator(".runs-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("run now")
    expect(rows.first.locator(".status")).to_have_text("succeeded", timeout=LONG)  # the page follows it live
    screenshot(page, "42-schedule-ran")

    # Pause asks first too.
    pause = page.get_by_role("button", name="Pause hourly primes")
    question = asked(page, pause.click, accept=False)
    assert "not made up" in question
    expect(page.locator("#schedule-live .status-head .status")).to_have_text("active")
    asked(page, pause.click, accept=True)
    expect(page.locator("#schedule-live .status-head .status")).to_have_text("paused")
    assert PeriodicTask.objects.get(name="hourly primes").enabled is False
    page.get_by_role("button", name="Resume hourly primes").click()
    expect(page.locator("#schedule-live .status-head .status")).to_have_text("active")
    assert PeriodicTask.objects.get(name="hourly primes").enabled is True

    page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="Schedules").click()
    row = page.locator(f"#schedule-{task.pk}")
    expect(row).to_contain_text("every hour")
    expect(row).to_contain_text("Count primes")
    screenshot(page, "43-schedules")
    watch.assert_clean()


def test_refused_and_missed_runs_show_on_the_schedule_page_in_the_users_zone(page_in, user, settings,
                                                                              redis_server):
    task = services.schedule_create(user=user, name="every minute", kind="noop", every_seconds=60,
                                    catch_up="skip")
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=timezone.now() - timedelta(minutes=10, seconds=5),
                                                   date_changed=timezone.now() - timedelta(minutes=10))
    services.schedules_catch_up()
    settings.JOBS_QUEUE_LIMIT = 1
    redis_server.client().rpush("default", b"{}")
    admission.reset()
    services.job_submit_scheduled(schedule_name="every minute", kind="noop", params={}, owner="alice",
                                  run_id="r1")
    page = page_in("Asia/Tokyo")
    watch = Watch(page)
    log_in(page, "alice", "alice-password-1")
    page.goto("/schedules")
    expect(page.locator("#time-zone-note")).to_contain_text("Asia/Tokyo")
    expect(page.locator(f"#schedule-{task.pk} td.num").first).to_have_text("10 / 1")
    page.get_by_role("link", name="every minute").click()
    expect(page.locator("#skipped-title + .event-list")).to_contain_text("refused by back pressure")
    missed = page.locator("#missed-title + .event-list li")
    expect(missed).to_contain_text("10 missed")
    expect(missed).to_contain_text("skipped")
    expect(missed.locator("time").first).to_have_text(re.compile(r" JST$"))
    expect(missed.locator("time").first).to_have_attribute("title", re.compile(r" UTC$"))
    screenshot(page, "44-schedule-missed-refused")
    watch.assert_clean()


def test_staff_see_every_schedule_and_act_only_with_the_permission(page_in, user, staff_user):
    services.schedule_create(user=user, name="alice's", kind="noop", every_seconds=60)
    page = page_in("UTC")
    log_in(page, "staff", "staff-password-1")
    page.goto("/schedules")
    row = page.locator(".schedules-table tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("as alice")
    expect(row.get_by_role("button")).to_have_count(0)
    expect(page.get_by_role("link", name="the admin")).to_have_attribute(
        "href", "/admin/django_celery_beat/periodictask/")
