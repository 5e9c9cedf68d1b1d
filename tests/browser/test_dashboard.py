"""The dashboard in a real browser, against a live server and a real worker."""
import re
import time

import pytest
from playwright.sync_api import expect

from jobs import services
from jobs.infra.broker import broker_list_names
from jobs.infra.counters import DRAIN_KEY
from jobs.models import Job, JobError
from tests.browser.conftest import log_in, screenshot
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

JOB_URL = re.compile(r"/jobs/[0-9a-f-]{36}$")
LONG = 60_000  # ms: the most a job in these tests may take to finish


def status_badge(page):
    return page.locator(".status-card .status")


def progress_bar(page):
    return page.locator(".status-card [role=progressbar]")


def mark_page(page) -> None:
    """Tag the loaded document: the tag survives htmx swaps and vanishes on any reload."""
    page.evaluate("window.__sameDocument = true")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


def open_kind(page, title: str) -> None:
    page.goto("/jobs/new")
    page.locator(".kind-card", has_text=title).click()
    expect(page.locator("#form-title")).to_have_text(title)


def submit(page) -> str:
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(JOB_URL)
    return page.url.rsplit("/", 1)[1]


def test_submit_each_built_in_kind_from_the_form_and_see_its_result(page, user, live_worker):
    page.goto("/")
    screenshot(page, "01-login")
    log_in(page, "alice", "alice-password-1")

    open_kind(page, "Count primes")
    screenshot(page, "03-submit-form")
    page.get_by_label("Limit").fill("2000000")
    submit(page)
    expect(status_badge(page)).to_have_text(re.compile("queued|running|succeeded"))
    mark_page(page)
    expect(status_badge(page)).to_have_text("succeeded", timeout=LONG)
    expect(page.locator("#result-title + .fieldlist")).to_contain_text("148,933")
    assert_not_reloaded(page)

    open_kind(page, "Fan out a post")
    page.get_by_label("Author id").fill("7")
    page.get_by_label("Text").fill("Hello, followers")
    page.get_by_label("Ensure followers").fill("120")
    page.get_by_label("Batch size").fill("50")
    submit(page)
    mark_page(page)
    expect(status_badge(page)).to_have_text("succeeded", timeout=LONG)
    expect(page.locator("#result-title ~ .fieldlist")).to_contain_text("Delivered")
    expect(page.locator("#result-title ~ .fieldlist")).to_contain_text("120")
    assert_not_reloaded(page)

    open_kind(page, "No-op")
    expect(page.get_by_text("This kind takes no parameters.")).to_be_visible()
    submit(page)
    mark_page(page)
    expect(status_badge(page)).to_have_text("succeeded", timeout=LONG)
    expect(page.get_by_text("The job returned nothing.")).to_be_visible()
    assert_not_reloaded(page)

    open_kind(page, "Word count")
    page.get_by_label("Text").fill("the quick brown fox jumps over the lazy dog\nthe end")
    page.get_by_label("Top").fill("3")
    submit(page)
    # An inline kind has finished by the time its page opens.
    expect(status_badge(page)).to_have_text("succeeded")
    table = page.locator("table", has=page.get_by_role("columnheader", name="Word"))
    expect(table.locator("tbody tr").first).to_contain_text("the")
    expect(table.locator("tbody tr").first).to_contain_text("3")
    screenshot(page, "05-detail-inline-result")

    page.goto("/")
    expect(page.locator(".jobs-table tbody tr")).to_have_count(4)
    screenshot(page, "02-job-list")
    assert Job.objects.filter(owner=user, status=Job.Status.SUCCEEDED).count() == 4


def test_a_progress_bar_reaches_100_percent_without_reloading(page, user, live_worker):
    log_in(page, "alice", "alice-password-1")
    open_kind(page, "Multi-step job")
    page.get_by_label("Steps").fill("6")
    page.get_by_label("Step seconds").fill("1")
    submit(page)
    mark_page(page)
    # Record every value the bar shows as htmx swaps it in.
    page.evaluate("""() => {
        window.__seen = [];
        const record = () => {
            const bar = document.querySelector('.status-card [role=progressbar]');
            if (bar) window.__seen.push(Number(bar.getAttribute('aria-valuenow')));
        };
        record();
        new MutationObserver(record).observe(document.body, {subtree: true, childList: true});
    }""")
    expect(status_badge(page)).to_have_text("running", timeout=LONG)
    expect(page.locator(".progress-message")).to_contain_text(re.compile(r"step [1-5] of 6"), timeout=LONG)
    screenshot(page, "04-detail-running")
    expect(progress_bar(page)).to_have_attribute("aria-valuenow", "100", timeout=LONG)
    expect(status_badge(page)).to_have_text("succeeded")
    seen = page.evaluate("window.__seen")
    assert any(0 < value < 100 for value in seen), seen
    assert seen == sorted(seen), seen
    assert_not_reloaded(page)
    expect(page.locator(".progress-percent")).to_have_text("100%")
    screenshot(page, "06-detail-succeeded")


def test_list_rows_appear_and_update_live(page, user, live_worker):
    log_in(page, "alice", "alice-password-1")
    expect(page.get_by_text("No jobs yet.")).to_be_visible()
    mark_page(page)
    job = services.job_submit(user=user, kind="steps", params={"steps": 3, "step_seconds": 0.5}).job
    row = page.locator(f"#row-{job.id}")
    expect(row).to_be_visible()
    expect(row.locator(".status")).to_have_text("succeeded", timeout=LONG)
    expect(page.locator(".tab-succeeded .count")).to_have_text("1")
    assert_not_reloaded(page)


def test_cancel_a_running_job(page, user, live_worker):
    log_in(page, "alice", "alice-password-1")
    open_kind(page, "Multi-step job")
    page.get_by_label("Steps").fill("60")
    page.get_by_label("Step seconds").fill("0.5")
    job_id = submit(page)
    expect(status_badge(page)).to_have_text("running", timeout=LONG)
    page.get_by_role("button", name="Cancel job").click()
    expect(status_badge(page)).to_have_text("cancelled")
    expect(page.get_by_text("The job was cancelled.")).to_be_visible()
    expect(page.get_by_role("button", name="Retry job")).to_be_visible()
    screenshot(page, "07-detail-cancelled")
    assert Job.objects.get(pk=job_id).status == Job.Status.CANCELLED
    # The run stops at its next progress check, long before its 30 s of steps are done.
    wait_for(lambda: "run stopped: job cancelled" in live_worker.log(), timeout=10, message="the run to stop")
    assert Job.objects.get(pk=job_id).progress_done < 60


def test_retry_a_failed_job(page, user, live_worker):
    log_in(page, "alice", "alice-password-1")
    open_kind(page, "Multi-step job")
    page.get_by_label("Steps").fill("2")
    page.get_by_label("Step seconds").fill("0.1")
    page.get_by_label("Fail at step").fill("1")
    page.get_by_label("Fail attempts").fill("3")
    job_id = submit(page)
    expect(status_badge(page)).to_have_text("failed", timeout=LONG)
    expect(page.locator(".attempts > li")).to_have_count(3)
    expect(page.locator(".attempts")).to_contain_text("StepFailed: told to fail at step 1 (attempt 3)")
    page.locator(".attempts > li").first.locator("summary", has_text="Traceback").click()
    expect(page.locator(".attempts > li").first.locator("pre")).to_contain_text("Traceback (most recent call last)")
    screenshot(page, "08-detail-failed")
    mark_page(page)
    page.get_by_role("button", name="Retry job").click()
    expect(page.get_by_text("The job was queued again.")).to_be_visible()
    expect(status_badge(page)).to_have_text("succeeded", timeout=LONG)
    assert_not_reloaded(page)
    job = Job.objects.get(pk=job_id)
    assert job.attempts == 4 and JobError.objects.filter(job=job).count() == 3


def test_a_validation_error_shows_next_to_its_field_and_the_keyboard_can_fix_it(page, user):
    log_in(page, "alice", "alice-password-1")
    open_kind(page, "Count primes")
    limit = page.get_by_label("Limit")
    limit.fill("1")
    limit.press("Enter")  # the keyboard submits the form
    field = page.locator("#field-params-limit")
    expect(field.locator(".field-errors")).to_contain_text("Input should be greater than or equal to 2")
    expect(page.get_by_label("Limit")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Limit")).to_have_value("1")
    screenshot(page, "09-submit-validation-error")
    assert not Job.objects.exists()
    page.get_by_label("Limit").fill("1000")
    page.get_by_label("Limit").press("Enter")
    page.wait_for_url(JOB_URL)
    assert Job.objects.get().params == {"limit": 1000}


def _fill_queue(redis_server, settings, *, queue="cpu", depth=6, limit=3):
    """Put the queue over its limit, with a drain rate that makes Retry-After one second."""
    settings.JOBS_QUEUE_LIMIT = limit
    client = redis_server.client()
    client.rpush(broker_list_names(queue)[0], *[b"placeholder"] * depth)
    now = int(time.time())
    for second in range(now - 10, now + 120):
        client.set(DRAIN_KEY.format(queue="*", second=second), 1000, ex=300)
    return client


def test_a_full_queue_is_explained_and_the_form_retries_by_itself(page, user, redis_server, settings):
    client = _fill_queue(redis_server, settings)
    log_in(page, "alice", "alice-password-1")
    open_kind(page, "Count primes")
    page.get_by_label("Limit").fill("4321")
    mark_page(page)
    page.get_by_role("button", name="Submit job").click()
    busy = page.locator("[data-busy-status]")
    expect(busy).to_contain_text("The queue is full.")
    expect(busy).to_contain_text("6 waiting jobs; the limit is 3")
    expect(busy).to_contain_text(re.compile(r"Trying again in \d+ s"))
    expect(page.get_by_label("Limit")).to_have_value("4321")
    screenshot(page, "10-submit-queue-full")
    assert not Job.objects.exists()
    # Still full at the next try; then the queue drains and the next try goes through.
    expect(busy).to_contain_text("attempt 3", timeout=LONG)
    client.delete(broker_list_names("cpu")[0])
    page.wait_for_url(JOB_URL, timeout=LONG)
    job = Job.objects.get()
    assert job.params == {"limit": 4321}
    # It shows as queued at once: there is no worker in this test.
    expect(status_badge(page)).to_have_text("queued")


def test_core_flows_work_without_javascript(new_page, user, redis_server, settings):
    page = new_page(javascript=False)
    log_in(page, "alice", "alice-password-1")
    page.goto("/jobs/new?kind=steps")
    page.get_by_label("Steps").fill("5")
    submit(page)
    expect(status_badge(page)).to_have_text("queued")
    page.get_by_role("button", name="Cancel job").click()
    expect(status_badge(page)).to_have_text("cancelled")
    expect(page.get_by_text("The job was cancelled.")).to_be_visible()

    client = _fill_queue(redis_server, settings, queue="default")
    page.goto("/jobs/new?kind=steps")
    page.get_by_label("Steps").fill("7")
    page.get_by_role("button", name="Submit job").click()
    expect(page.get_by_role("heading", name="The queue is full")).to_be_visible()
    expect(page.get_by_text("Your job was not submitted.")).to_be_visible()
    screenshot(page, "11-queue-full-without-javascript")
    client.delete(broker_list_names("default")[0])
    page.get_by_role("button", name="Submit the same job again").click()
    page.wait_for_url(JOB_URL)
    assert Job.objects.get(status=Job.Status.QUEUED).params["steps"] == 7


def test_another_users_job_is_not_reachable(new_page, user, other_user):
    job = services.job_submit(user=user, kind="word_count", params={"text": "private words"}).job
    page = new_page()
    log_in(page, "bob", "bob-password-1")
    expect(page.get_by_text("No jobs yet.")).to_be_visible()
    response = page.goto(f"/jobs/{job.id}")
    assert response.status == 404
    expect(page.get_by_role("heading", name="No such job")).to_be_visible()
    expect(page.get_by_text("private words")).to_have_count(0)
    screenshot(page, "12-not-found")


def test_queues_page_shows_depth_limits_and_the_worker(page, user, worker_factory, redis_server, settings):
    # The worker leaves the io queue alone: the placeholders put there are not messages.
    worker = worker_factory(queues="default,cpu")
    settings.JOBS_QUEUE_LIMITS = {"io": 4}
    redis_server.client().rpush(broker_list_names("io")[0], *[b"placeholder"] * 5)
    log_in(page, "alice", "alice-password-1")
    page.get_by_role("link", name="Queues").click()
    io_row = page.locator("tr", has=page.get_by_role("rowheader", name="io"))
    expect(io_row).to_contain_text("refusing")
    expect(page.locator("tr", has=page.get_by_role("rowheader", name="cpu"))).to_contain_text("accepting")
    expect(page.get_by_role("rowheader", name=worker.hostname)).to_be_visible(timeout=LONG)
    expect(page.get_by_role("link", name=re.compile("Open Flower"))).to_be_visible()
    screenshot(page, "13-queues")


def test_api_tokens_are_created_shown_once_and_revoked(page, user):
    log_in(page, "alice", "alice-password-1")
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    plain = page.get_by_label("New token", exact=True).input_value()
    assert plain.startswith("jpt_")
    screenshot(page, "14-tokens-created")
    page.goto("/tokens")
    expect(page.get_by_label("New token", exact=True)).to_have_count(0)
    expect(page.get_by_role("cell", name=f"{plain[:12]}…")).to_be_visible()
    # The page asks first: declining keeps the token.
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name=f"Revoke token {plain[:12]}").click()
    wait_for(lambda: asked, timeout=10, message="the page to ask before revoking")
    assert plain[:12] in asked[0] and "cannot be undone" in asked[0]
    expect(page.locator(".status-active")).to_have_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Revoke token {plain[:12]}").click()
    expect(page.get_by_text("was revoked")).to_be_visible()
    expect(page.locator(".status-revoked")).to_have_text("revoked")
    screenshot(page, "15-tokens")


def test_staff_see_every_job_with_its_owner_and_the_admin_links(page, user, other_user, staff_user):
    for owner, text in ((user, "alice's words"), (other_user, "bob's words")):
        services.job_submit(user=owner, kind="word_count", params={"text": text})
    services.job_submit(user=user, kind="count_primes", params={"limit": 1000})
    log_in(page, "staff", "staff-password-1")
    rows = page.locator(".jobs-table tbody tr")
    expect(rows).to_have_count(3)
    expect(page.get_by_role("columnheader", name="Owner")).to_be_visible()
    expect(rows.filter(has_text="bob")).to_have_count(1)
    expect(page.get_by_role("link", name="Schedules", exact=True)).to_have_attribute("href", "/schedules")
    expect(page.get_by_role("link", name="Admin", exact=True)).to_have_attribute("href", "/admin/")
    expect(page.get_by_role("link", name=re.compile("^Flower"))).to_be_visible()
    page.get_by_label("Kind").select_option("count_primes")
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(r"kind=count_primes"))
    page.get_by_label("Kind").select_option("")
    expect(rows).to_have_count(3)
    screenshot(page, "16-job-list-staff")


def test_the_api_docs_render_their_operations_with_no_other_host_reachable(page, live_server):
    from urllib.parse import urlsplit

    asked_elsewhere = []

    def loopback_only(route):
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            asked_elsewhere.append(route.request.url)
            route.abort()

    page.context.route("**/*", loopback_only)
    page.goto("/api/docs")
    expect(page.get_by_text("Submit a job").first).to_be_visible()
    expect(page.get_by_text("Cancel a job").first).to_be_visible()
    assert asked_elsewhere == []


def test_a_tracked_celery_task_fails_is_run_again_from_the_dashboard_and_keeps_its_history(
        page, staff_user, worker_factory, redis_server, settings, tmp_path):
    """A plain @shared_task the project had before the platform: seen, run again with its arguments, kept."""
    from tests.celery_tasks_for_tests import needs_file

    settings.JOBS_TRACK_CELERY_TASKS = ["tests.celery_tasks_for_tests.*"]
    worker = worker_factory()
    marker = tmp_path / "needed"
    sent = needs_file.delay(str(marker))
    log_in(page, "staff", "staff-password-1")
    page.goto(f"/jobs/{sent.id}")
    expect(status_badge(page)).to_have_text("failed", timeout=LONG)
    expect(page.locator(".tracked-note")).to_contain_text("keeps Celery's own semantics")
    expect(page.locator(".attempts")).to_contain_text("FileNotFoundError")
    screenshot(page, "tracked-01-failed")

    marker.write_text("now it exists")
    mark_page(page)
    page.get_by_role("button", name="Run again").click()
    expect(status_badge(page)).to_have_text("succeeded", timeout=LONG)
    assert_not_reloaded(page)
    expect(page.locator(".attempts")).to_contain_text("FileNotFoundError")  # the failed run stays in its history

    # Every process but the test's own goes and comes back; Redis comes back empty. The ledger keeps it all.
    worker.stop(timeout=10)
    redis_server.stop()
    redis_server.start()
    worker_factory()
    page.goto("/?kind=tests.celery_tasks_for_tests.needs_file")
    expect(page.locator("#jobs-panel")).to_contain_text("succeeded")
    page.goto(f"/jobs/{sent.id}")
    expect(status_badge(page)).to_have_text("succeeded")
    expect(page.locator(".attempts")).to_contain_text("FileNotFoundError")
    screenshot(page, "tracked-02-after-restart")
