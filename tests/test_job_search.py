"""Searching the job list by a parameter's value and by error text, besides id, kind and status: what matches, and
how a search reads a bounded window of jobs per page and carries on below it."""
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from jobs import selectors
from jobs.models import Job

pytestmark = pytest.mark.django_db


def make(owner, minutes_ago: int, *, kind="count_primes", params=None, error="", status=Job.Status.SUCCEEDED):
    created = timezone.now() - timedelta(minutes=minutes_ago)
    return Job.objects.create(owner=owner, kind=kind, params=params if params is not None else {}, error=error,
                              status=status, created_at=created, run_at=created)


def ids(page) -> list:
    return [job.id for job in page.jobs]


@pytest.fixture
def jobs(user, other_user):
    return {
        "limit": make(user, 1, params={"limit": 5000}),
        "limit_text": make(user, 2, params={"limit": "5000"}),
        "other_limit": make(user, 3, params={"limit": 50000}),
        "text": make(user, 4, kind="word_count", params={"text": "Zoë counts the Quick brown fox"}),
        "failed": make(user, 5, kind="steps", params={"steps": 3}, error="StepFailed: told to fail at step 2",
                       status=Job.Status.FAILED),
        "bobs": make(other_user, 6, params={"limit": 5000}, error="StepFailed: bob's"),
    }


def test_key_equals_value_matches_that_parameter_exactly_as_text(user, jobs):
    assert ids(selectors.job_page(user=user, param="limit=5000")) == [jobs["limit"].id, jobs["limit_text"].id]
    assert ids(selectors.job_page(user=user, param="limit = 50000")) == [jobs["other_limit"].id]
    assert ids(selectors.job_page(user=user, param="nosuchkey=1")) == []


def test_other_text_matches_anywhere_in_the_parameters_in_any_case(user, jobs):
    assert ids(selectors.job_page(user=user, param="quick BROWN")) == [jobs["text"].id]
    assert ids(selectors.job_page(user=user, param="Zoë")) == [jobs["text"].id]
    assert ids(selectors.job_page(user=user, param='"steps"')) == [jobs["failed"].id]


def test_error_text_matches_in_any_case_and_combines_with_the_other_filters(user, jobs):
    assert ids(selectors.job_page(user=user, error="told to FAIL")) == [jobs["failed"].id]
    assert ids(selectors.job_page(user=user, error="StepFailed", status="failed", kind="steps")) == [
        jobs["failed"].id]
    assert ids(selectors.job_page(user=user, error="StepFailed", status="succeeded")) == []
    assert ids(selectors.job_page(user=user, error="StepFailed", param="steps=3")) == [jobs["failed"].id]
    prefix = jobs["failed"].id.hex[:6]
    assert ids(selectors.job_page(user=user, id_prefix=prefix, error="step")) == [jobs["failed"].id]
    assert ids(selectors.job_page(user=user, id_prefix=prefix, error="nothing like it")) == []


def test_a_user_finds_only_their_own_jobs_and_staff_everyones(user, staff_user, jobs):
    assert jobs["bobs"].id not in ids(selectors.job_page(user=user, error="StepFailed"))
    assert ids(selectors.job_page(user=staff_user, error="StepFailed")) == [jobs["failed"].id, jobs["bobs"].id]


def test_a_search_reads_a_bounded_window_and_older_carries_on_below_it(user, monkeypatch):
    monkeypatch.setattr(selectors, "SEARCH_SCAN_ROWS", 4)
    matches = [make(user, minute, error="Timeout" if minute % 3 == 0 else "") for minute in range(1, 13)]
    wanted = [job.id for job in matches if job.error]
    found, cursor, windows = [], None, 0
    while True:
        page = selectors.job_page(user=user, error="timeout", older_than=cursor, size=2)
        found += ids(page)
        windows += 1
        if page.older is None:
            break
        cursor = page.older
    assert found == wanted
    first = selectors.job_page(user=user, error="timeout", size=2)
    assert ids(first) == wanted[:1] and first.searched_to == matches[3].created_at
    assert windows <= 6


def test_a_page_full_of_matches_continues_after_its_last_match(user, monkeypatch):
    monkeypatch.setattr(selectors, "SEARCH_SCAN_ROWS", 100)
    jobs = [make(user, minute, error="boom") for minute in range(1, 6)]
    page = selectors.job_page(user=user, error="boom", size=2)
    assert ids(page) == [jobs[0].id, jobs[1].id] and page.searched_to is None
    assert ids(selectors.job_page(user=user, error="boom", size=2, older_than=page.older)) == [jobs[2].id,
                                                                                               jobs[3].id]


def test_the_list_page_filters_by_parameter_and_error_and_keeps_them_in_its_links(client, user, jobs):
    client.force_login(user)
    page = client.get(reverse("jobs:list"), {"param": "limit=5000", "status": "succeeded"}).content.decode()
    assert str(jobs["limit"].id) in page and str(jobs["limit_text"].id) in page
    assert str(jobs["other_limit"].id) not in page and str(jobs["text"].id) not in page
    assert 'value="limit=5000"' in page and "param=limit%3D5000" in page  # the status tabs keep the search
    failed = client.get(reverse("jobs:list"), {"error": "told to"}).content.decode()
    assert str(jobs["failed"].id) in failed and str(jobs["limit"].id) not in failed
    assert "No jobs match these filters." in client.get(reverse("jobs:list"), {"error": "zzz"}).content.decode()


def test_the_list_page_says_how_far_a_search_read(client, user, monkeypatch):
    monkeypatch.setattr(selectors, "SEARCH_SCAN_ROWS", 2)
    for minute in range(1, 5):
        make(user, minute)
    client.force_login(user)
    page = client.get(reverse("jobs:list"), {"error": "nothing"}).content.decode()
    assert "No match among these 2 jobs" in page and "This page searched 2 jobs" in page
    assert 'rel="next"' in page and "error=nothing" in page
