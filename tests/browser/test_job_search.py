"""Searching the job list by a parameter and by error text in a real browser: the list follows as you type."""
import re

import pytest
from playwright.sync_api import expect

from jobs.models import Job
from tests.browser.conftest import log_in, screenshot
from tests.browser.test_csp import Watch

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_job_list_filters_by_parameter_and_error_as_you_type(page, user):
    Job.objects.create(owner=user, kind="count_primes", params={"limit": 5000}, status=Job.Status.SUCCEEDED)
    Job.objects.create(owner=user, kind="count_primes", params={"limit": 90000}, status=Job.Status.SUCCEEDED)
    Job.objects.create(owner=user, kind="steps", params={"steps": 4}, status=Job.Status.FAILED,
                       error="StepFailed: told to fail at step 3")
    Job.objects.create(owner=user, kind="word_count", params={"text": "the quick brown fox"},
                       status=Job.Status.SUCCEEDED)
    watch = Watch(page)
    log_in(page, "alice", "alice-password-1")
    rows = page.locator(".jobs-table tbody tr")
    expect(rows).to_have_count(4)

    page.get_by_label("Parameter").fill("limit=5000")
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(r"param=limit%3D5000"))
    page.get_by_label("Parameter").fill("QUICK brown")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Word count")
    page.get_by_label("Parameter").fill("")
    expect(rows).to_have_count(4)

    page.get_by_label("Error", exact=True).fill("told to fail")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("failed")
    # The status tabs keep the search.
    page.locator(".tab", has_text="Succeeded").click()
    expect(page).to_have_url(re.compile(r"error=told"))
    expect(page.locator(".empty")).to_have_text("No jobs match these filters.")
    screenshot(page, "60-job-search")
    page.get_by_role("link", name="Clear").click()
    expect(rows).to_have_count(4)
    watch.assert_clean()
