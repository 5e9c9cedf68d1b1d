"""The platform as Django's task backend, seen from the platform: one ledger for kinds and tasks, the same
gate, the same pages and API, Django's own rules and system checks."""
import pytest
from django.urls import reverse

from jobs import services
from jobs.infra.broker import broker_list_names
from jobs.models import Job
from jobs.task_backend import PlatformTaskBackend, QueueFull, platform_priority
from tests import tasks_for_tests as tasks

try:
    from django.tasks import TaskResultStatus
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
except ImportError:
    from django_tasks import TaskResultStatus
    from django_tasks.exceptions import InvalidTaskError

pytestmark = pytest.mark.django_db


def test_djangos_priorities_map_onto_the_platforms_in_order():
    assert platform_priority(0) == 5  # the default is the default
    assert [platform_priority(p) for p in (-100, -81, -80, -21, -20, -1)] == [0, 0, 1, 3, 4, 4]
    assert [platform_priority(p) for p in (1, 25, 26, 50, 75, 76, 100)] == [6, 6, 7, 7, 8, 9, 9]
    mapped = [platform_priority(p) for p in range(-100, 101)]
    assert mapped == sorted(mapped)


def test_an_enqueued_task_is_a_job_of_its_kind_with_its_queue_and_priority():
    result = tasks.fail.enqueue("why")
    job = Job.objects.get(pk=result.id)
    assert job.kind == "tests.tasks_for_tests.fail" and job.params == {"reason": "why"}
    assert job.queue == "cpu" and job.priority == 7 and job.owner is None
    assert tasks.fail.using(queue_name="io", priority=-100).enqueue("x").id != result.id
    other = Job.objects.exclude(pk=result.id).get()
    assert other.queue == "io" and other.priority == 0


def test_arguments_are_checked_as_a_call_would_be_and_nothing_is_written():
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        tasks.add.enqueue(1)
    with pytest.raises(TypeError, match="not valid for the task.*b"):
        tasks.add.enqueue(1, "two")
    with pytest.raises(TypeError):
        tasks.greet.enqueue(object())  # not JSON
    assert not Job.objects.exists()


def test_djangos_own_rules_hold():
    with pytest.raises(InvalidTaskError):
        tasks.add.using(queue_name="nowhere")
    with pytest.raises(InvalidTaskError):
        tasks.add.using(priority=101)


def test_back_pressure_refuses_an_enqueue_naming_the_queue_and_retry_after(settings, redis_server):
    settings.JOBS_QUEUE_LIMITS = {"default": 1}
    settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS = 0
    redis_server.client().rpush(broker_list_names("default")[0], b"waiting")
    with pytest.raises(QueueFull) as refused:
        tasks.add.enqueue(1, 2)
    assert refused.value.queue == "default" and refused.value.retry_after >= 1
    assert "queue default is full" in str(refused.value) and "retry after" in str(refused.value)
    assert not Job.objects.exists()
    assert tasks.fail.enqueue("the cpu queue is not full").status == TaskResultStatus.READY


def test_a_cancelled_task_reads_as_failed(user):
    result = tasks.add.enqueue(1, 2)
    services.job_cancel(job=Job.objects.get(pk=result.id))
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.is_finished


def test_system_checks_name_a_queue_no_worker_serves():
    backend = PlatformTaskBackend("other", {"QUEUES": ["default", "elsewhere"], "OPTIONS": {"MAX_ATTEMPTS": 0}})
    found = {message.id: message.msg for message in backend.check()}
    assert "elsewhere" in found["jobs.E001"] and "jobs.E002" in found


def test_tasks_are_kinds_in_the_api_and_the_dashboard(api, client, user):
    kinds = {k["name"]: k for k in api.get("/api/kinds").json()}
    add = kinds["tests.tasks_for_tests.add"]
    assert add["title"] == "Add" and add["description"] == "Add two numbers."
    assert add["params_schema"]["properties"]["a"]["type"] == "integer"
    assert kinds["tests.tasks_for_tests.greet"]["params_schema"]["properties"]["name"] == {"title": "Name"}
    submitted = api.post("/api/jobs", {"kind": "tests.tasks_for_tests.add", "params": {"a": 1, "b": 2}})
    assert submitted.status_code == 202 and submitted.json()["queue"] == "default"
    assert api.post("/api/jobs", {"kind": "tests.tasks_for_tests.add", "params": {"a": 1}}).status_code == 422

    client.force_login(user)
    form = client.get(reverse("jobs:new"), {"kind": "tests.tasks_for_tests.add"}).content.decode()
    assert 'name="params-a"' in form and 'type="number"' in form  # typed from the signature
    untyped = client.get(reverse("jobs:new"), {"kind": "tests.tasks_for_tests.greet"}).content.decode()
    assert 'name="params-name"' in untyped and "<textarea" in untyped  # no hint: any JSON value
