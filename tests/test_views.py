"""The dashboard through Django's test client: access, isolation, the submit form, actions, pagination."""
import re
from datetime import timedelta

import pytest
from django.templatetags.static import static
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs import selectors, services
from jobs.infra.broker import broker_list_names
from jobs.models import ApiToken, Job, JobError

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default hasher is slow on purpose; these tests create users and log in many times.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


def make_job(owner, *, kind="steps", status=Job.Status.QUEUED, created_at=None, **fields) -> Job:
    now = created_at or timezone.now()
    return Job.objects.create(owner=owner, kind=kind, status=status, params={"steps": 2}, created_at=now,
                              run_at=now, **fields)


def field_block(html: str, name: str) -> str:
    """The markup of one form field's wrapper, from its opening tag to the next field or fieldset end."""
    match = re.search(rf'<div class="field[^"]*" id="field-{re.escape(name)}">(.*?)</div>', html, re.S)
    assert match, f"no field {name} in the page"
    return match.group(1)


# --- Access -----------------------------------------------------------------------------


@pytest.mark.parametrize("name,args", [("jobs:list", []), ("jobs:new", []), ("jobs:queues", []),
                                       ("jobs:tokens", []), ("jobs:detail", ["0d4b8f7e-4c1f-4a55-9a43-1b6c2f8f0e11"])])
def test_every_page_needs_a_login(client, name, args):
    url = reverse(name, args=args)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_live_part_polled_after_logout_sends_the_page_to_the_login_form(client):
    response = client.get(reverse("jobs:list"), HTTP_HX_TARGET="jobs-panel",
                          HTTP_HX_CURRENT_URL="http://testserver/?kind=noop", **HTMX)
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("login") + "?next=/%3Fkind%3Dnoop"


def test_logging_in_leads_to_the_job_list(client, user):
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'<label for="id_username">' in page.content
    response = client.post(reverse("login"), {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 302 and response["Location"] == reverse("jobs:list")
    assert client.get(reverse("jobs:list")).status_code == 200


def test_a_wrong_password_is_refused_on_the_login_page(client, user):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


# --- Isolation --------------------------------------------------------------------------


def test_the_list_shows_only_the_users_own_jobs(alice, user, other_user):
    mine = make_job(user)
    theirs = make_job(other_user)
    html = alice.get(reverse("jobs:list")).content.decode()
    assert str(mine.id)[:8] in html
    assert str(theirs.id) not in html
    assert ">Owner<" not in html
    html = alice.get(reverse("jobs:list"), {"q": str(theirs.id)[:8]}).content.decode()
    assert str(theirs.id) not in html and "No jobs match these filters." in html


def test_staff_see_everyones_jobs_with_an_owner_column(client, staff_user, user, other_user):
    make_job(user)
    make_job(other_user)
    client.force_login(staff_user)
    html = client.get(reverse("jobs:list")).content.decode()
    assert ">Owner<" in html
    assert ">alice<" in html and ">bob<" in html


def test_another_users_job_is_not_found_for_every_action(alice, other_user):
    theirs = make_job(other_user)
    for name, method in (("jobs:detail", "get"), ("jobs:cancel", "post"), ("jobs:retry", "post")):
        response = getattr(alice, method)(reverse(name, args=[theirs.id]))
        assert response.status_code == 404, name
        assert b"No such job" in response.content
    theirs.refresh_from_db()
    assert theirs.status == Job.Status.QUEUED


# --- The submit form --------------------------------------------------------------------


def test_the_form_is_generated_from_the_kinds_schema(alice):
    html = alice.get(reverse("jobs:new"), {"kind": "count_primes"}).content.decode()
    limit = field_block(html, "params-limit")
    assert '<label for="id_params-limit">Limit' in limit
    assert 'type="number"' in limit and 'value="1000000"' in limit
    assert 'min="2"' in limit and 'max="200000000"' in limit
    assert "Count the primes below this number. From 2 to 200,000,000." in limit
    assert 'aria-describedby="id_params-limit_helptext"' in limit
    assert '<input type="hidden" name="kind" value="count_primes"' in html

    steps = alice.get(reverse("jobs:new"), {"kind": "steps"}).content.decode()
    assert 'step="any"' in field_block(steps, "params-step_seconds")  # a float
    fail_at = field_block(steps, "params-fail_at_step")  # Optional[int]: not required, empty
    assert "required" not in fail_at.split("<input", 1)[1].split(">", 1)[0]

    fan_out = alice.get(reverse("jobs:new"), {"kind": "fan_out"}).content.decode()
    author = field_block(fan_out, "params-author_id")
    assert "At least 1." in author and "9,007" not in author  # 2**53 bounds JSON clients, not people
    assert "(required)" in field_block(fan_out, "params-text")
    assert "<textarea" in field_block(fan_out, "params-text")  # 500 characters: a text area


def test_every_kind_is_offered(alice):
    html = alice.get(reverse("jobs:new")).content.decode()
    for kind in ("count_primes", "steps", "noop", "fan_out", "word_count"):
        assert f"?kind={kind}" in html


def test_submitting_creates_a_queued_job_and_opens_it(alice, user):
    response = alice.post(reverse("jobs:new"), {"kind": "count_primes", "params-limit": "5000"})
    job = Job.objects.get(owner=user)
    assert response.status_code == 302 and response["Location"] == reverse("jobs:detail", args=[job.id])
    assert job.params == {"limit": 5000} and job.status == Job.Status.QUEUED
    page = alice.get(response["Location"]).content.decode()
    assert 'class="status status-queued">queued<' in page
    assert 'hx-trigger="every 1s' in page  # live until it finishes


def test_the_inline_kinds_form_schedules_it_for_a_worker_or_runs_it_at_once(alice, user):
    form = alice.get(reverse("jobs:new"), {"kind": "word_count"}).content.decode()
    assert "run it at once, in this request; a later time queues it" in form
    later = alice.post(reverse("jobs:new"), {"kind": "word_count", "params-text": "two words",
                                             "run_at": "2099-01-01T09:30"})
    job = Job.objects.get(owner=user)
    assert later.status_code == 302 and job.status == Job.Status.QUEUED and job.started_at is None
    assert job.run_at.isoformat() == "2099-01-01T09:30:00+00:00"
    alice.post(reverse("jobs:new"), {"kind": "word_count", "params-text": "two words"})
    now = Job.objects.exclude(pk=job.pk).get(owner=user)
    assert now.status == Job.Status.SUCCEEDED and now.worker.startswith("inline@")


def test_blank_optional_fields_take_the_kinds_defaults(alice, user):
    alice.post(reverse("jobs:new"), {"kind": "steps", "params-steps": "3", "params-step_seconds": "0.1",
                                     "params-fail_at_step": "", "params-fail_attempts": "", "priority": "8"})
    job = Job.objects.get(owner=user)
    assert job.params == {"steps": 3, "step_seconds": 0.1, "fail_at_step": None, "fail_attempts": 1000}
    assert job.priority == 8


def test_an_inline_kind_shows_its_result_at_once(alice, user):
    response = alice.post(reverse("jobs:new"), {"kind": "word_count", "params-text": "the cat and the hat",
                                                "params-top": "3"}, follow=True)
    job = Job.objects.get(owner=user)
    assert job.status == Job.Status.SUCCEEDED
    html = response.content.decode()
    assert 'class="status status-succeeded">succeeded<' in html
    assert "<h3 class=\"block-title\">Top words</h3>" in html
    assert re.search(r"<tr><td>the</td><td>2</td></tr>", html)  # a list of records is a table
    assert "<dt>Unique words</dt><dd>4</dd>" in html
    assert 'hx-trigger="every 1s' not in html  # finished: no polling


def test_a_validation_error_shows_next_to_its_field(alice, user):
    response = alice.post(reverse("jobs:new"), {"kind": "count_primes", "params-limit": "1"})
    assert response.status_code == 422
    html = response.content.decode()
    limit = field_block(html, "params-limit")
    assert "Input should be greater than or equal to 2" in limit
    assert 'aria-invalid="true"' in limit and "id_params-limit_error" in limit
    assert 'value="1"' in limit  # what was typed is kept
    assert not Job.objects.exists()


def test_type_and_required_errors_show_next_to_their_fields(alice):
    data = {"kind": "fan_out", "params-author_id": "x", "params-text": ""}
    html = alice.post(reverse("jobs:new"), data).content.decode()
    assert "Enter a whole number." in field_block(html, "params-author_id")
    assert "This field is required." in field_block(html, "params-text")
    assert not Job.objects.exists()


def test_an_unknown_kind_is_refused_with_a_message(alice):
    response = alice.post(reverse("jobs:new"), {"kind": "no_such_kind"})
    assert response.status_code == 422
    assert b"Choose a kind of job to run." in response.content


def test_htmx_submission_redirects_the_page_and_errors_swap_the_form(alice, user):
    bad = alice.post(reverse("jobs:new"), {"kind": "count_primes", "params-limit": "0"}, **HTMX)
    assert bad.status_code == 422
    assert bad.content.decode().lstrip().startswith('<form id="submit-form"')  # the form alone
    good = alice.post(reverse("jobs:new"), {"kind": "count_primes", "params-limit": "100"}, **HTMX)
    job = Job.objects.get(owner=user)
    assert good.status_code == 200 and good["HX-Redirect"] == reverse("jobs:detail", args=[job.id])


def test_csrf_is_enforced_on_every_form(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    job = make_job(user)
    for url, data in ((reverse("jobs:new"), {"kind": "noop"}), (reverse("jobs:cancel", args=[job.id]), {}),
                      (reverse("jobs:retry", args=[job.id]), {}), (reverse("jobs:tokens"), {"name": "x"})):
        assert client.post(url, data).status_code == 403, url
    assert Job.objects.count() == 1 and not ApiToken.objects.exists()
    page = client.get(reverse("jobs:new"), {"kind": "noop"})
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    assert client.post(reverse("jobs:new"), {"kind": "noop", "csrfmiddlewaretoken": token}).status_code == 302


def test_a_full_queue_refuses_the_form_with_a_page_that_explains_and_resubmits(alice, user, redis_server, settings):
    settings.JOBS_QUEUE_LIMIT = 5
    redis_server.client().rpush(broker_list_names("cpu")[0], *[b"x"] * 6)
    response = alice.post(reverse("jobs:new"), {"kind": "count_primes", "params-limit": "4242"})
    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    html = response.content.decode()
    assert "The queue is full" in html and "Your job was not submitted." in html
    assert 'id="refusal-summary"' in html
    assert '<input type="hidden" name="params-limit" value="4242">' in html
    assert not Job.objects.exists()
    # Inline kinds never touch the queue, so they are not refused.
    assert alice.post(reverse("jobs:new"), {"kind": "word_count", "params-text": "hi"}).status_code == 302


# --- Cancel and retry -------------------------------------------------------------------


def test_cancel_and_retry_post_and_come_back_to_the_job(alice, user):
    job = make_job(user)
    response = alice.post(reverse("jobs:cancel", args=[job.id]), follow=True)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert b"The job was cancelled." in response.content
    assert b'id="retry-button"' in response.content and b'id="cancel-button"' not in response.content

    response = alice.post(reverse("jobs:retry", args=[job.id]), follow=True)
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert b"The job was queued again." in response.content


def test_an_action_that_does_not_apply_says_why(alice, user):
    job = make_job(user, status=Job.Status.SUCCEEDED, finished_at=timezone.now())
    response = alice.post(reverse("jobs:cancel", args=[job.id]), follow=True)
    assert b"Not done: a succeeded job cannot be cancelled." in response.content
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_htmx_actions_answer_with_the_live_part(alice, user):
    job = make_job(user, status=Job.Status.FAILED, error="boom", finished_at=timezone.now(), attempts=1)
    response = alice.post(reverse("jobs:retry", args=[job.id]), **HTMX)
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="job-live"')
    assert "The job was queued again." in html and "status-queued" in html


# --- Job detail -------------------------------------------------------------------------


def test_the_detail_page_shows_attempts_errors_and_tracebacks(alice, user):
    job = make_job(user, status=Job.Status.FAILED, attempts=2, attempt_limit=2, error="StepFailed: told to fail",
                   started_at=timezone.now(), finished_at=timezone.now())
    for attempt, word in ((1, "first"), (2, "second")):
        JobError.objects.create(job=job, attempt=attempt, error=f"StepFailed: {word}",
                                traceback=f"Traceback (most recent call last):\n  {word}")
    html = alice.get(reverse("jobs:detail", args=[job.id])).content.decode()
    assert "Failed after 2 attempts." in html
    assert html.index("Attempt 1") < html.index("Attempt 2")
    assert "StepFailed: first" in html and "  second" in html
    assert 'id="retry-button"' in html
    assert "<dt>Steps</dt><dd>2</dd>" in html  # parameters


def test_the_live_part_polls_until_the_job_finishes(alice, user):
    job = make_job(user, status=Job.Status.RUNNING, progress_done=3, progress_total=4, progress_message="step 3 of 4",
                   started_at=timezone.now(), attempts=1)
    part = alice.get(reverse("jobs:detail", args=[job.id]), HTTP_HX_TARGET="job-live", **HTMX).content.decode()
    assert part.lstrip().startswith('<div id="job-live"') and "<html" not in part
    assert 'hx-trigger="every 1s' in part
    assert 'aria-valuenow="75"' in part and "step 3 of 4" in part
    Job.objects.filter(pk=job.pk).update(progress_done=30_000_000, progress_total=40_000_000)
    part = alice.get(reverse("jobs:detail", args=[job.id]), HTTP_HX_TARGET="job-live", **HTMX).content.decode()
    assert "(30,000,000 of 40,000,000)" in part
    Job.objects.filter(pk=job.pk).update(status=Job.Status.CANCELLED, finished_at=timezone.now())
    part = alice.get(reverse("jobs:detail", args=[job.id]), HTTP_HX_TARGET="job-live", **HTMX).content.decode()
    assert "hx-trigger" not in part and "status-cancelled" in part


# --- The list: filters, search, pagination, counts ---------------------------------------


def test_filters_by_status_and_kind_and_search_by_id_prefix(alice, user):
    running = make_job(user, status=Job.Status.RUNNING)
    noop = make_job(user, kind="noop")
    base = reverse("jobs:list")
    html = alice.get(base, {"status": "running"}).content.decode()
    assert str(running.id)[:8] in html and str(noop.id)[:8] not in html
    html = alice.get(base, {"kind": "noop"}).content.decode()
    assert str(noop.id)[:8] in html and str(running.id)[:8] not in html
    html = alice.get(base, {"q": str(noop.id)[:6]}).content.decode()
    assert str(noop.id)[:8] in html and str(running.id)[:8] not in html
    html = alice.get(base, {"q": str(noop.id)[:6], "status": "running"}).content.decode()
    assert str(noop.id)[:8] not in html
    html = alice.get(base, {"q": str(noop.id)[:2]}).content.decode()
    assert "Type at least 4 characters of the job id." in html
    html = alice.get(base, {"q": "not-hex!"}).content.decode()
    assert "No jobs match these filters." in html


def test_keyset_pages_walk_forward_and_back_without_counting_everything(alice, user):
    start = timezone.now() - timedelta(hours=1)
    jobs = [make_job(user, created_at=start + timedelta(seconds=i)) for i in range(120)]
    newest_first = [str(j.id)[:8] for j in reversed(jobs)]

    def shown(html):
        return re.findall(r'class="mono job-link" href="/jobs/[^"]+" title="[^"]+">([0-9a-f]{8})<', html)

    with CaptureQueriesContext(connection) as queries:
        first = alice.get(reverse("jobs:list")).content.decode()
    assert shown(first) == newest_first[:50]
    # No full count: every COUNT is over a LIMITed subquery.
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts)

    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = alice.get(older).content.decode()
    assert shown(second) == newest_first[50:100]
    third = alice.get(re.search(r'href="([^"]+)" rel="next"', second).group(1).replace("&amp;", "&")).content.decode()
    assert shown(third) == newest_first[100:]
    assert 'rel="next"' not in third
    back = alice.get(re.search(r'href="([^"]+)" rel="prev"', third).group(1).replace("&amp;", "&")).content.decode()
    assert shown(back) == newest_first[50:100]


def test_status_counts_are_capped(alice, user):
    now = timezone.now()
    Job.objects.bulk_create([Job(owner=user, kind="noop", status=Job.Status.SUCCEEDED, created_at=now, run_at=now)
                             for _ in range(selectors.STATUS_COUNT_CAP + 1)])
    make_job(user, status=Job.Status.FAILED)
    html = alice.get(reverse("jobs:list")).content.decode()
    assert re.search(r"Succeeded <span class=\"count\">1,000\+</span>", html)
    assert re.search(r"Failed <span class=\"count\">1</span>", html)


def test_a_page_costs_the_same_queries_however_many_jobs_it_shows(alice, user, django_assert_max_num_queries):
    for _ in range(30):
        make_job(user, status=Job.Status.RUNNING, progress_done=1, progress_total=2)
    with django_assert_max_num_queries(10):
        alice.get(reverse("jobs:list"))


def test_the_polled_panel_is_the_panel_alone(alice, user):
    make_job(user)
    part = alice.get(reverse("jobs:list"), HTTP_HX_TARGET="jobs-panel", **HTMX).content.decode()
    assert part.lstrip().startswith('<div id="jobs-panel"') and "<html" not in part


# --- Queues and tokens ------------------------------------------------------------------


def test_the_queues_page_shows_depth_against_the_limit(alice, redis_server, settings):
    settings.JOBS_QUEUE_LIMITS = {"cpu": 4}
    redis_server.client().rpush(broker_list_names("cpu")[0], *[b"x"] * 5)
    html = alice.get(reverse("jobs:queues")).content.decode()
    cpu_row = re.search(r'<th scope="row" class="mono">cpu</th>(.*?)</tr>', html, re.S).group(1)
    assert '<td class="num">5</td>' in cpu_row and '<td class="num">4</td>' in cpu_row
    assert "refusing" in cpu_row and "count_primes" in cpu_row
    assert "No worker is online" in html
    assert settings.FLOWER_URL in html


def test_a_token_is_shown_once_then_listed_and_revocable(alice, user, other_user):
    response = alice.post(reverse("jobs:tokens"), {"name": "ci"})
    html = response.content.decode()
    plain = re.search(r'id="new-token-value" class="mono token-value" type="text" value="([^"]+)"', html).group(1)
    assert services.api_token_user(plain=plain) == user
    assert response["Cache-Control"] == "no-store"
    listing = alice.get(reverse("jobs:tokens")).content.decode()
    assert plain not in listing and plain[:12] in listing

    token = ApiToken.objects.get(user=user)
    theirs, _ = services.api_token_create(user=other_user)
    assert alice.post(reverse("jobs:token_revoke", args=[theirs.id])).status_code == 404
    response = alice.post(reverse("jobs:token_revoke", args=[token.id]), follow=True)
    assert b"was revoked" in response.content
    assert services.api_token_user(plain=plain) is None
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_static_assets_are_local(alice):
    html = alice.get(reverse("jobs:list")).content.decode()
    assert f'src="{static("vendor/htmx/htmx.min.js")}"' in html
    assert "https://" not in html.split("<body", 1)[0]  # no CDN in the head


def test_the_charts_stylesheet_is_the_one_pygal_writes_for_their_style(settings):
    """The charts leave out the <style> pygal puts in each (the Content-Security-Policy blocks it): the
    static file must say what it would have said."""
    from jobs.web.charts import chart_css

    regenerate = ("python manage.py shell -c \"from jobs.web.charts import chart_css; "
                  "open('static/jobs/charts.css', 'w').write(chart_css())\"")
    assert (settings.BASE_DIR / "static/jobs/charts.css").read_text() == chart_css(), f"regenerate it: {regenerate}"


def test_bars_are_drawn_with_a_class_per_percent_not_a_style_attribute(alice, user, redis_server, settings):
    job = make_job(user, status=Job.Status.RUNNING, progress_done=1, progress_total=3, attempts=1)
    settings.JOBS_QUEUE_LIMITS = {"cpu": 8}
    redis_server.client().rpush(broker_list_names("cpu")[0], *[b"x"] * 2)
    detail = alice.get(reverse("jobs:detail", args=[job.id])).content.decode()
    listing = alice.get(reverse("jobs:list")).content.decode()
    queues = alice.get(reverse("jobs:queues")).content.decode()
    assert '<div class="progress-fill fill-33"></div>' in detail and '<div class="progress-fill fill-33"></div>' in listing
    assert re.search(r'aria-label="Queue cpu, share of its limit"[^>]*><div class="meter-fill fill-25"', queues)
    css = (settings.BASE_DIR / "static/jobs/dashboard.css").read_text()
    assert all(f".fill-{n} {{ width: {n}%; }}" in css for n in range(101))


def test_templates_cause_no_queries(user, rf, django_assert_num_queries):
    from django.template.loader import render_to_string

    from jobs.web import views

    job = make_job(user, status=Job.Status.FAILED, attempts=1, error="boom", finished_at=timezone.now())
    JobError.objects.create(job=job, attempt=1, error="boom", traceback="tb")
    request = rf.get("/")
    request.user = user
    request.htmx = False
    context = views._job_context(request, selectors.job_get(user=user, job_id=job.id))
    page = selectors.job_page(user=user)
    with django_assert_num_queries(0):
        render_to_string("jobs/detail.html", context, request=request)
        render_to_string("jobs/_jobs_panel.html", {"page": page, "status_tabs": [], "show_owner": True},
                         request=request)


def test_a_failed_jobs_page_says_where_it_stopped(alice, user):
    job = make_job(user, status=Job.Status.FAILED, attempts=3, attempt_limit=3, progress_done=2, progress_total=5,
                   progress_message="step 2 of 5", error="StepFailed: told to fail at step 3 (attempt 3)")
    page = alice.get(reverse("jobs:detail", args=[job.id])).content.decode()
    assert "Failed after 3 attempts, at 2 of 5 (step 2 of 5)." in page
    assert 'Stopped at <strong class="progress-percent">40%</strong>' in page
