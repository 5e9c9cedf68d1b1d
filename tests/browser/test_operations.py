"""Operations in a real browser, under the Content-Security-Policy: pausing a queue, bulk actions, the audit log, each
confirmation asked and honoured."""
import re

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from playwright.sync_api import expect

from jobs import services
from jobs.models import AuditEntry, Job, QueuePause
from tests.browser.conftest import log_in, screenshot
from tests.browser.test_csp import Watch
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
S = Job.Status


@pytest.fixture
def watch(page):
    return Watch(page)


def member(user, group: str) -> None:
    services.operator_groups_ensure()  # a test that commits empties the tables after it, groups included
    Group.objects.get(name=group).user_set.add(user)


def failed_jobs(owner, count: int, *, kind: str = "steps") -> list[Job]:
    now = timezone.now()
    return [Job.objects.create(owner=owner, kind=kind, status=S.FAILED, params={"steps": 2}, error="StepFailed: boom",
                               created_at=now, run_at=now, attempts=1, finished_at=now) for _ in range(count)]


def answer_next_dialog(page, accept: bool) -> list[str]:
    """Answer the next confirm() the page opens; the list gets its message."""
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept() if accept else dialog.dismiss()))
    return asked


def io_row(page):
    return page.locator("tr", has=page.get_by_role("rowheader", name="io", exact=True))


def test_pause_and_resume_a_queue_from_the_queues_page(page, watch, user):
    member(user, "Pausers")
    log_in(page, "alice", "alice-password-1")
    page.get_by_role("link", name="Queues").click()
    expect(io_row(page)).to_contain_text("running")

    # Declining the question leaves the queue alone.
    asked = answer_next_dialog(page, accept=False)
    page.get_by_role("button", name="Pause queue io").click()
    wait_for(lambda: asked, timeout=10, message="the page to ask before pausing")
    assert "Pause queue io?" in asked[0] and "submissions are still accepted" in asked[0]
    page.wait_for_timeout(300)
    assert not QueuePause.objects.exists()

    asked = answer_next_dialog(page, accept=True)
    page.get_by_role("button", name="Pause queue io").click()
    expect(page.get_by_text("Queue io is paused")).to_be_visible()
    expect(io_row(page)).to_contain_text("paused")
    expect(io_row(page)).to_contain_text("by alice")
    assert QueuePause.objects.get().queue == "io"
    screenshot(page, "30-queue-paused")

    asked = answer_next_dialog(page, accept=True)
    page.get_by_role("button", name="Resume queue io").click()
    expect(page.get_by_text("Queue io is resumed")).to_be_visible()
    assert "Resume queue io?" in asked[0]
    expect(io_row(page)).to_contain_text("running")
    assert not QueuePause.objects.exists()
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == ["queue_pause",
                                                                                        "queue_resume"]
    watch.assert_clean()


def test_bulk_retry_counts_first_and_acts_once_confirmed(page, watch, user, other_user):
    member(user, "Retriers")
    mine = failed_jobs(user, 3)
    failed_jobs(user, 1, kind="noop")
    theirs = failed_jobs(other_user, 2)
    log_in(page, "alice", "alice-password-1")
    page.get_by_role("link", name="Queues").click()
    page.get_by_role("link", name="Bulk actions").click()
    expect(page.get_by_role("heading", name="Bulk actions")).to_be_visible()
    expect(page.get_by_label("Owner")).to_have_count(0)  # only staff act on others' jobs
    page.get_by_label(re.compile("^Retry")).check()
    page.get_by_label("Kind").select_option("steps")
    page.get_by_label("Parameters or error contain").fill("BOOM")
    page.get_by_role("button", name="Count matching jobs").click()
    expect(page.locator("#bulk-matched")).to_have_text("3 jobs")
    expect(page.get_by_text("kind steps")).to_be_visible()
    screenshot(page, "31-bulk-preview")
    assert [job.status for job in Job.objects.filter(pk__in=[j.pk for j in mine])] == [S.FAILED] * 3

    asked = answer_next_dialog(page, accept=False)
    page.get_by_role("button", name="Retry 3 jobs").click()
    wait_for(lambda: asked, timeout=10, message="the page to ask before retrying")
    assert asked[0].startswith("Retry 3 jobs?")
    page.wait_for_timeout(300)
    assert Job.objects.filter(status=S.FAILED).count() == 6

    answer_next_dialog(page, accept=True)
    page.get_by_role("button", name="Retry 3 jobs").click()
    expect(page.get_by_text("Retried 3 of 3 matching jobs.")).to_be_visible()
    expect(page.locator("#bulk-matched")).to_have_text("0 jobs")
    expect(page.get_by_text("No job matches")).to_be_visible()
    screenshot(page, "32-bulk-done")
    assert sorted(Job.objects.filter(owner=user).values_list("status", flat=True)) == [S.FAILED] + [S.QUEUED] * 3
    assert all(job.status == S.FAILED for job in Job.objects.filter(pk__in=[j.pk for j in theirs]))
    watch.assert_clean()


def test_staff_cancel_another_users_jobs_by_owner_and_read_the_audit_log(page, watch, staff_user, user):
    member(staff_user, "Operators")
    now = timezone.now()
    queued = [Job.objects.create(owner=user, kind="noop", status=S.QUEUED, created_at=now, run_at=now)
              for _ in range(2)]
    log_in(page, "staff", "staff-password-1")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Bulk actions").click()
    page.get_by_label(re.compile("^Cancel")).check()
    page.get_by_label("Owner").fill("alice")
    page.get_by_role("button", name="Count matching jobs").click()
    expect(page.locator("#bulk-matched")).to_have_text("2 jobs")
    asked = answer_next_dialog(page, accept=True)
    page.get_by_role("button", name="Cancel 2 jobs").click()
    expect(page.get_by_text("Cancelled 2 of 2 matching jobs.")).to_be_visible()
    assert "cannot be undone" in asked[0]
    assert {job.status for job in Job.objects.filter(pk__in=[j.pk for j in queued])} == {S.CANCELLED}

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    row = page.locator("tbody tr").first
    expect(row).to_contain_text("staff")
    expect(row).to_contain_text("Cancelled jobs by filter")
    expect(row).to_contain_text('"owner": "alice"')
    expect(row).to_contain_text("2 of 2 matched")
    page.get_by_label("Action").select_option("queue_pause")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("Nothing recorded that matches.")).to_be_visible()
    screenshot(page, "33-audit")
    watch.assert_clean()


def test_a_user_without_the_permissions_sees_no_operations_and_is_refused(page, watch, user):
    watch.expected_failures |= {("/operations/bulk", 403), ("/operations/audit", 403)}
    log_in(page, "alice", "alice-password-1")
    page.get_by_role("link", name="Queues").click()
    expect(io_row(page)).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Pause queue"))).to_have_count(0)
    expect(page.get_by_role("link", name="Bulk actions")).to_have_count(0)
    expect(page.get_by_role("link", name="Audit log")).to_have_count(0)
    page.goto("/operations/bulk")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_text("jobs.bulk_retry")).to_be_visible()
    page.goto("/operations/audit")
    expect(page.get_by_text("jobs.view_audit")).to_be_visible()
    watch.assert_clean()
