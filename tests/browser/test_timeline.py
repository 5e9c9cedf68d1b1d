"""The timeline page in a real browser, with a real worker: a post on your own timeline at once, the followers'
timelines filling live, a follower's timeline opened; staff posting as another user."""
import re

import pytest
from playwright.sync_api import expect

from jobs.models import Follow, Job, TimelineEntry
from tests.browser.conftest import log_in, screenshot
from tests.browser.test_csp import Watch

pytestmark = pytest.mark.django_db(transaction=True)

LONG = 60_000


def test_a_post_shows_at_once_and_the_counter_follows_delivery_to_a_followers_timeline(page, user, other_user,
                                                                                   live_worker):
    watch = Watch(page)
    log_in(page, "alice", "alice-password-1")
    page.get_by_role("link", name="Timeline").click()
    expect(page.get_by_role("heading", name="Your timeline", exact=True)).to_be_visible()
    expect(page.locator(".author-note")).to_contain_text("You post as alice")
    expect(page.locator(".author-note")).to_contain_text("author")
    page.get_by_role("textbox", name="Post").fill("Hello, followers")
    page.locator("summary", has_text="Delivery options").click()
    page.get_by_label("Give the author followers first (demo)").fill("3000")
    page.get_by_label("Timelines written per batch").fill("100")
    page.get_by_role("button", name="Post").click()

    # On the author's own timeline at once, before any delivery.
    post = page.locator(".post-new")
    expect(post).to_contain_text("Hello, followers")
    counter = page.locator("#delivery .delivery-count")
    expect(counter).to_contain_text("followers' timelines")
    screenshot(page, "50-timeline-posted")
    seen = set()
    for _ in range(600):
        text = counter.inner_text()
        seen.add(text)
        if "3,000 of 3,000" in text:
            break
        page.wait_for_timeout(100)
    expect(counter).to_contain_text("In 3,000 of 3,000 followers' timelines.", timeout=LONG)
    expect(page.locator("#delivery .status")).to_have_text("succeeded")
    assert len(seen) >= 2, seen  # the counter moved while the page was open
    assert TimelineEntry.objects.filter(post_id=Job.objects.get().id).count() == 3001
    screenshot(page, "51-timeline-delivered")

    # The followers list links to their timelines (bob, whose id follows alice's, is one of the demo followers).
    assert Follow.objects.filter(author_id=user.pk, follower_id=other_user.pk).exists()
    expect(page.locator(".followers-count")).to_have_text("3,000")
    page.get_by_role("link", name="bob's timeline").click()
    expect(page.get_by_role("heading", name="Timeline of bob")).to_be_visible()
    expect(page.locator(".post")).to_contain_text("Hello, followers")
    expect(page.get_by_role("button", name="Post")).to_have_count(0)
    expect(page.locator(".post time")).to_have_attribute("title", re.compile(" UTC$"))
    screenshot(page, "52-follower-timeline")
    watch.assert_clean()


def test_staff_post_as_an_existing_user_chosen_by_name(page, staff_user, user):
    log_in(page, "staff", "staff-password-1")
    page.goto("/timeline")
    author = page.get_by_role("combobox", name="Author")
    expect(author.locator("option")).to_contain_text([f"alice (user id {user.pk})",
                                                      f"staff (user id {staff_user.pk})"])
    expect(page.locator("#field-author .help")).to_contain_text("Whose post this is")
    author.select_option(label=f"alice (user id {user.pk})")
    page.get_by_role("textbox", name="Post").fill("Posted for alice")
    page.get_by_role("button", name="Post").click()
    expect(page.get_by_role("heading", name="Timeline of alice")).to_be_visible()
    expect(page.locator(".post-new")).to_contain_text("Posted for alice")
    expect(page.locator("#delivery")).to_be_visible()
    job = Job.objects.get()
    assert job.params["author_id"] == user.pk and job.owner == staff_user
