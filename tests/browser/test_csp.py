"""Every page under the Content-Security-Policy in a real browser: nothing blocked, nothing logged, all of it working."""
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule
from playwright.sync_api import expect

from jobs import services
from jobs.aggregation import aggregate_jobs
from jobs.infra.broker import broker_list_names
from jobs.models import Job
from tests.browser.conftest import log_in, screenshot

pytestmark = pytest.mark.django_db(transaction=True)

JOB_URL = re.compile(r"/jobs/[0-9a-f-]{36}$")
POLICY_PARTS = ("default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
                "object-src 'none'", "base-uri 'self'", "frame-ancestors 'none'", "form-action 'self'")

# Runs in every document before its own scripts; the binding survives navigations.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolation({directive: event.effectiveDirective, blocked: event.blockedURI,
                         source: event.sourceFile, line: event.lineNumber, sample: event.sample,
                         page: location.pathname});
});
"""


class Watch:
    """What the browser says about a page: policy violations, console messages, uncaught errors, and the
    policy header of every document it loads."""

    def __init__(self, page):
        self.page = page
        self.violations: list[dict] = []
        self.console: list[str] = []
        self.errors: list[str] = []
        self.documents: list[tuple[str, str | None]] = []
        self.failed: list[str] = []
        # Error answers that are meant: the favicon no page links to; a test adds its own (a form with errors: 422).
        self.expected_failures = {("/favicon.ico", 404)}
        page.expose_binding("__cspViolation", lambda source, violation: self.violations.append(violation))
        page.add_init_script(REPORT_VIOLATIONS)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("response", self._response)

    def _console(self, message) -> None:
        # Chromium logs each 4xx/5xx answer too; those are judged by their status in _response.
        if not message.text.startswith("Failed to load resource: the server responded with a status of"):
            where = message.location
            self.console.append(f"{message.type}: {message.text} ({where.get('url')}:{where.get('lineNumber')})")

    def _response(self, response) -> None:
        if response.request.resource_type == "document":
            self.documents.append((response.url, response.headers.get("content-security-policy")))
        path = urlsplit(response.url).path
        if response.status >= 400 and (path, response.status) not in self.expected_failures:
            self.failed.append(f"{response.request.method} {response.url}: {response.status}")

    def assert_clean(self) -> None:
        # Violation reports and console messages arrive as tasks of their own: let those queued run first.
        self.page.wait_for_timeout(300)
        assert self.violations == [], self.violations
        assert self.console == [], self.console
        assert self.errors == [], self.errors
        assert self.failed == [], self.failed
        assert self.documents, "no page was loaded"
        for url, policy in self.documents:
            assert policy is not None, f"{url} has no Content-Security-Policy"
            for part in POLICY_PARTS:
                assert part in policy, (url, policy)
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, (url, policy)


@pytest.fixture
def watch(page):
    return Watch(page)


def mark_page(page) -> None:
    page.evaluate("window.__sameDocument = true")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


def fill_share(page, bar) -> float:
    """How much of its track a progress bar or meter fills, as drawn (0 to 1)."""
    return page.evaluate("""(bar) => {
        const fill = bar.firstElementChild;
        return fill.getBoundingClientRect().width / bar.getBoundingClientRect().width;
    }""", bar.element_handle())


def finished_jobs(owner, count: int) -> None:
    """Finished jobs of two kinds in the last half hour, counted into the rollups the stats page reads."""
    now = timezone.now()
    jobs = []
    for i in range(count):
        created = now - timedelta(minutes=30) + timedelta(seconds=40 * i)
        status = Job.Status.FAILED if i % 4 == 0 else Job.Status.SUCCEEDED
        jobs.append(Job(owner=owner, kind="steps" if i % 2 else "noop", status=status, created_at=created,
                        run_at=created, published_at=created, started_at=created + timedelta(seconds=1),
                        finished_at=created + timedelta(seconds=2 + i % 5), attempts=1))
    Job.objects.bulk_create(jobs)
    aggregate_jobs(until=now + timedelta(days=1))


def test_the_watch_sees_what_the_policy_blocks(page, watch, user):
    page.goto("/accounts/login/")
    page.evaluate("""() => {
        document.body.insertAdjacentHTML("beforeend", '<p style="color: red">inline style</p>');
        const script = document.createElement("script");
        script.textContent = "window.__ran = true";
        document.body.appendChild(script);
    }""")
    page.wait_for_timeout(300)
    assert {v["directive"] for v in watch.violations} >= {"style-src-attr", "script-src-elem"}, watch.violations
    assert page.evaluate("window.__ran") is None
    assert any("Content Security Policy" in line for line in watch.console), watch.console


def test_the_dashboard_works_under_the_policy(page, watch, user, redis_server, settings):
    page.goto("/accounts/login/")
    log_in(page, "alice", "alice-password-1")

    # The job list: a job submitted elsewhere shows up by itself, and its progress bar moves.
    expect(page.get_by_text("No jobs yet.")).to_be_visible()
    mark_page(page)
    job = services.job_submit(user=user, kind="steps", params={"steps": 4}).job
    row = page.locator(f"#row-{job.id}")
    expect(row.locator(".status")).to_have_text("queued")
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, started_at=timezone.now(), attempts=1,
                                         progress_done=1, progress_total=4)
    bar = row.locator("[role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "25")
    assert fill_share(page, bar) == pytest.approx(0.25, abs=0.02)
    page.get_by_label("Kind").select_option("noop")
    expect(page.locator(".jobs-table tbody")).to_contain_text("No jobs match these filters.")
    expect(page).to_have_url(re.compile(r"kind=noop"))
    assert_not_reloaded(page)
    screenshot(page, "csp-01-job-list")

    # A job's page: progress polled in, then cancelled with its button, all without a reload.
    page.goto(f"/jobs/{job.id}")
    mark_page(page)
    Job.objects.filter(pk=job.pk).update(progress_done=3)
    bar = page.locator(".status-card [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "75")
    assert fill_share(page, bar) == pytest.approx(0.75, abs=0.02)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".status-card .status")).to_have_text("cancelled")
    expect(page.get_by_text("The job was cancelled.")).to_be_visible()
    assert_not_reloaded(page)
    screenshot(page, "csp-02-job-detail")

    # The submit form: an error swapped in next to its field, then a job submitted.
    page.goto("/jobs/new")
    watch.expected_failures.add(("/jobs/new", 422))
    page.locator(".kind-card", has_text="Count primes").click()
    mark_page(page)
    page.get_by_label("Limit").fill("1")
    page.get_by_label("Limit").press("Enter")
    expect(page.locator("#field-params-limit .field-errors")).to_contain_text("greater than or equal to 2")
    assert_not_reloaded(page)
    page.get_by_text("Scheduling options").click()
    expect(page.get_by_label("Priority")).to_be_visible()
    screenshot(page, "csp-03-submit-form")
    page.get_by_label("Limit").fill("1000")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(JOB_URL)
    expect(page.locator(".status-card .status")).to_have_text("queued")

    # The queues page: the depth and its meter follow the broker.
    settings.JOBS_QUEUE_LIMITS = {"io": 10}
    page.get_by_role("link", name="Queues").click()
    io_row = page.locator("tr", has=page.get_by_role("rowheader", name="io"))
    expect(io_row.locator("td").first).to_have_text("0")
    mark_page(page)
    redis_server.client().rpush(broker_list_names("io")[0], *[b"placeholder"] * 5)
    expect(io_row.locator("td").first).to_have_text("5")
    meter = io_row.locator("[role=meter]")
    expect(meter).to_have_attribute("aria-valuenow", "50")
    assert fill_share(page, meter) == pytest.approx(0.5, abs=0.02)
    assert_not_reloaded(page)
    screenshot(page, "csp-04-queues")

    # API tokens: created, copied, revoked after the page asks.
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=re.compile("^Revoke token")).click()
    expect(page.get_by_text("was revoked")).to_be_visible()
    screenshot(page, "csp-05-tokens")

    # Stats: pygal's charts drawn with the static stylesheet, since their own <style> is left out.
    finished_jobs(user, 24)
    page.get_by_role("link", name="Stats").click()
    charts = page.locator("figure.chart svg.pygal-chart")
    expect(charts).to_have_count(4)
    expect(charts.first).to_be_visible()
    assert page.locator("figure.chart svg style, figure.chart svg script, figure.chart svg [style]").count() == 0
    # The stylesheet may still be loading when the charts show: wait for its rules to apply.
    page.wait_for_function(
        "getComputedStyle(document.querySelector('svg.pygal-chart .series.color-0 rect')).fill"
        " === 'rgb(31, 119, 180)'", timeout=10_000)  # the first of the STYLE's colours
    title_size = page.evaluate("getComputedStyle(document.querySelector('svg.pygal-chart .title')).fontSize")
    assert title_size == "14px"
    box = charts.first.bounding_box()
    assert box["width"] > 300 and box["height"] > 100
    screenshot(page, "csp-06-stats")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    watch.assert_clean()


def test_live_parts_poll_only_while_the_page_is_in_view(page, watch, user):
    log_in(page, "alice", "alice-password-1")
    polls = []
    page.on("request", lambda request: polls.append(request.url) if request.headers.get("hx-request") else None)
    with page.expect_request(lambda request: request.headers.get("hx-request") == "true"):
        pass
    page.evaluate("Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'})")
    page.wait_for_timeout(300)
    polls.clear()
    page.wait_for_timeout(4500)  # more than two polling intervals
    assert polls == []
    page.evaluate("delete document.visibilityState")  # the real one again: visible
    with page.expect_request(lambda request: request.headers.get("hx-request") == "true"):
        pass
    watch.assert_clean()


def test_the_admin_works_under_the_policy(page, watch, django_user_model, user):
    django_user_model.objects.create_superuser(username="root", password="root-password-1")
    for kind in ("noop", "steps"):
        services.job_submit(user=user, kind=kind, params={})
    CrontabSchedule.objects.create(minute="30", hour="4", day_of_week="*", day_of_month="*", month_of_year="*")

    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("root-password-1")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("link", name="Jobs", exact=True).first).to_be_visible()
    screenshot(page, "csp-07-admin-index")

    # The job changelist: the actions' select-all counter and the filters are scripted.
    page.goto("/admin/jobs/job/")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    page.locator("#action-toggle").check()
    expect(page.locator(".action-counter")).to_contain_text("2 of 2 selected")
    page.get_by_role("link", name="noop").first.click()
    expect(rows).to_have_count(1)
    screenshot(page, "csp-08-admin-jobs")
    rows.first.locator("th a").click()
    expect(page.locator("#content h1")).to_contain_text("job")

    # A schedule: django-celery-beat's crontab translation runs from a static file.
    page.goto("/admin/django_celery_beat/periodictask/add/")
    crontab = page.locator("#id_crontab option", has_text="30 4").get_attribute("value")
    page.locator("#id_crontab").select_option(crontab)
    expect(page.locator(".field-crontab .help")).to_contain_text("Translation: At 04:30")
    screenshot(page, "csp-09-admin-schedule")
    watch.assert_clean()


def test_the_api_docs_work_under_the_policy(page, watch, user):
    asked_elsewhere = []

    def loopback_only(route):
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            asked_elsewhere.append(route.request.url)
            route.abort()

    page.context.route("**/*", loopback_only)
    log_in(page, "alice", "alice-password-1")
    page.goto("/api/docs")
    operations = page.locator(".opblock")
    expect(operations.filter(has_text="Submit a job").first).to_be_visible()
    assert operations.count() >= 7
    kinds = operations.filter(has_text="/api/kinds").first
    kinds.locator(".opblock-summary").click()
    kinds.get_by_role("button", name="Try it out").click()
    kinds.get_by_role("button", name="Execute").click()
    expect(kinds.locator(".live-responses-table .response .response-col_status")).to_have_text("200")
    expect(kinds.locator(".highlight-code").first).to_contain_text("count_primes")
    screenshot(page, "csp-10-api-docs")
    assert asked_elsewhere == []
    watch.assert_clean()
