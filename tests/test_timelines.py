"""The timeline page of the fan-out kind: posting as yourself (staff: as any user), the post on your timeline at
once, the delivery counter, and followers' timelines read-only."""
import pytest
from django.urls import reverse

from jobs import selectors, services
from jobs.models import Follow, Job, TimelineEntry

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


def test_a_post_is_on_the_authors_timeline_at_once_and_its_job_delivers_it(alice, user):
    response = alice.post(reverse("jobs:timeline"), {"text": "Hello, followers", "ensure_followers": "3",
                                                     "batch_size": "2"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{reverse('jobs:timeline')}?post={job.id}"
    assert (job.kind, job.owner, job.params) == ("fan_out", user, {"author_id": user.pk, "text": "Hello, followers",
                                                                   "ensure_followers": 3, "batch_size": 2})
    assert list(TimelineEntry.objects.values_list("reader_id", "text")) == [(user.pk, "Hello, followers")]
    page = alice.get(response["Location"]).content.decode()
    assert "Hello, followers" in page and "post-new" in page
    assert f'hx-get="{reverse("jobs:post_delivery", args=[job.id])}?reader={user.pk}"' in page
    assert "You post as <strong>alice</strong>" in page and "author" in page
    assert 'name="author"' not in page


def test_the_delivery_counter_reads_the_jobs_progress_and_stops_polling_when_done(alice, user):
    Follow.objects.bulk_create([Follow(author_id=user.pk, follower_id=user.pk + i) for i in range(1, 6)])
    job = services.timeline_post(user=user, author_id=user.pk, text="hi")
    url = reverse("jobs:post_delivery", args=[job.id])
    part = alice.get(url).content.decode()
    assert "<strong data-delivered>0</strong> of <strong data-followers>5</strong>" in part and "hx-get" in part
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, progress_done=2, progress_total=5)
    assert "<strong data-delivered>2</strong> of <strong data-followers>5</strong>" in alice.get(url).content.decode()
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, progress_done=5)
    done = alice.get(url).content.decode()
    assert "<strong data-delivered>5</strong>" in done and "hx-get" not in done and "hx-swap-oob" not in done
    # Shown on the author's timeline, the last answer brings the followers list up to date too.
    with_followers = alice.get(url, {"reader": user.pk}).content.decode()
    assert 'id="followers" class="card" aria-labelledby="followers-title" hx-swap-oob="true"' in with_followers
    assert '<strong class="followers-count">5</strong>' in with_followers


def test_staff_post_as_an_existing_user_and_land_on_their_timeline(client, staff_user, user):
    client.force_login(staff_user)
    page = client.get(reverse("jobs:timeline")).content.decode()
    assert f'<option value="{user.pk}">alice (user id {user.pk})</option>' in page
    response = client.post(reverse("jobs:timeline"), {"text": "as alice", "author": str(user.pk)})
    job = Job.objects.get()
    assert response["Location"] == f"{reverse('jobs:timeline_of', args=[user.pk])}?post={job.id}"
    assert job.params["author_id"] == user.pk and job.owner == staff_user
    assert "as alice" in client.get(response["Location"]).content.decode()


def test_the_author_must_be_an_existing_user(client, staff_user):
    client.force_login(staff_user)
    response = client.post(reverse("jobs:timeline"), {"text": "x", "author": "987654"})
    assert response.status_code == 422 and not Job.objects.exists()
    with pytest.raises(services.JobInputError):
        services.timeline_post(user=staff_user, author_id=987654, text="x")


def test_a_user_posts_as_themselves_only(user, other_user):
    with pytest.raises(services.NotPermitted):
        services.timeline_post(user=user, author_id=other_user.pk, text="not mine")
    assert not Job.objects.exists()


def test_followers_timelines_open_read_only_and_strangers_timelines_do_not(alice, user, other_user,
                                                                          django_user_model):
    stranger = django_user_model.objects.create_user(username="carol", password="x")
    Follow.objects.create(author_id=user.pk, follower_id=other_user.pk)
    TimelineEntry.objects.create(reader_id=other_user.pk, post_id="00000000-0000-0000-0000-000000000001",
                                 author_id=user.pk, text="for bob")
    page = alice.get(reverse("jobs:timeline")).content.decode()
    assert f'href="{reverse("jobs:timeline_of", args=[other_user.pk])}"' in page and "bob's timeline" in page
    follower = alice.get(reverse("jobs:timeline_of", args=[other_user.pk]))
    assert follower.status_code == 200
    assert "for bob" in follower.content.decode() and 'name="text"' not in follower.content.decode()
    assert alice.get(reverse("jobs:timeline_of", args=[stranger.pk])).status_code == 404
    assert alice.get(reverse("jobs:timeline_of", args=[2**63])).status_code == 404


def test_another_users_post_delivery_is_not_found(client, user, other_user):
    job = services.timeline_post(user=user, author_id=user.pk, text="mine")
    client.force_login(other_user)
    assert client.get(reverse("jobs:post_delivery", args=[job.id])).status_code == 404
    assert selectors.post_delivery(user=other_user, post_id=job.id) is None


def test_the_timeline_pages_need_a_login(client):
    assert client.get(reverse("jobs:timeline")).status_code == 302
    assert client.get(reverse("jobs:timeline_of", args=[1])).status_code == 302


def test_the_timeline_templates_cause_no_queries(client, staff_user, user, monkeypatch):
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
    Follow.objects.create(author_id=user.pk, follower_id=staff_user.pk)
    job = services.timeline_post(user=staff_user, author_id=user.pk, text="hi")
    client.force_login(staff_user)
    client.get(reverse("jobs:timeline"))
    client.get(reverse("jobs:timeline_of", args=[user.pk]), {"post": job.id})
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)
    client.get(reverse("jobs:post_delivery", args=[job.id]), {"reader": user.pk})
    assert rendered == [("jobs/timeline.html", 0), ("jobs/timeline.html", 0), ("jobs/_delivery.html", 0)]
