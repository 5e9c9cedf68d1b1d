"""Django's task API, end to end through the platform, with nothing but Django's own imports: what a project
that knows nothing of the platform writes (`django.tasks` on Django 6, the `django_tasks` backport on 5.2)."""
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

try:
    from django.tasks import TaskResultStatus, default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks import TaskResultStatus, default_task_backend
    from django_tasks.exceptions import TaskResultDoesNotExist

from tests import tasks_for_tests as tasks
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def finished(result, timeout=60):
    def done():
        result.refresh()
        return result.is_finished
    wait_for(done, timeout=timeout, message=f"task {result.id} to finish")
    return result


def test_a_task_enqueued_runs_and_its_result_is_read_back(live_worker):
    result = tasks.add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY and uuid.UUID(result.id)
    assert result.args == [2, 3] and result.kwargs == {}  # by position, as the signature takes them
    assert result.backend == "default" and result.enqueued_at is not None and result.started_at is None
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    assert result.started_at >= result.enqueued_at and result.finished_at >= result.started_at
    assert result.last_attempted_at == result.started_at
    assert len(result.worker_ids) == 1 and result.attempts == 1 and result.errors == []
    again = tasks.add.get_result(result.id)
    assert again.return_value == 5 and again.id == result.id
    assert default_task_backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL


def test_a_failure_keeps_the_exception_class_and_traceback(live_worker):
    result = finished(tasks.fail.enqueue("not today"))
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class_path == "tests.tasks_for_tests.Refused"
    assert error.exception_class is tasks.Refused
    assert "not today" in error.traceback and "Traceback" in error.traceback
    with pytest.raises(ValueError):
        result.return_value


def test_run_after_defers_the_task(live_worker):
    when = timezone.now() + timedelta(seconds=2)
    result = tasks.add.using(run_after=when).enqueue(1, 1)
    assert result.status == TaskResultStatus.READY
    finished(result)
    assert result.return_value == 2 and result.started_at >= when


def test_a_task_whose_worker_dies_runs_again_and_its_context_says_which_attempt(live_worker, tmp_path):
    result = finished(tasks.attempt_of.enqueue(str(tmp_path / "tried")), timeout=90)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"attempt": 2, "id": result.id}
    assert result.attempts == 2 and len(result.errors) == 1  # the lost run is recorded


def test_coroutines_keyword_only_and_variadic_parameters(live_worker):
    doubled = tasks.wait_and_double.enqueue(21)
    summed = tasks.sum_all.enqueue(1, 2, 3.5, scale=2, colour="blue")
    greeted = tasks.greet.enqueue("Ada")
    assert finished(doubled).return_value == 42
    assert finished(summed).return_value == {"sum": 13.0, "labels": {"colour": "blue"}}
    assert summed.args == [1, 2, 3.5] and summed.kwargs == {"scale": 2, "colour": "blue"}
    assert finished(greeted).return_value == "Hello, Ada!"


def test_async_enqueue_and_get_result(live_worker):
    from asgiref.sync import async_to_sync

    result = async_to_sync(tasks.add.aenqueue)(20, 22)
    finished(result)
    fetched = async_to_sync(tasks.add.aget_result)(result.id)
    assert fetched.return_value == 42


def test_signals_are_sent_as_the_task_is_enqueued_started_and_finished(worker_factory, tmp_path):
    log = tmp_path / "signals.log"
    worker_factory(env={"TASK_SIGNALS_LOG": str(log)})
    received = []
    try:
        from django.tasks.signals import task_enqueued
    except ImportError:
        from django_tasks.signals import task_enqueued

    def on_enqueued(sender, task_result, **kwargs):
        received.append((task_result.id, task_result.status))

    task_enqueued.connect(on_enqueued)
    try:
        result = tasks.add.enqueue(4, 4)
    finally:
        task_enqueued.disconnect(on_enqueued)
    assert received == [(result.id, TaskResultStatus.READY)]
    finished(result)
    wait_for(lambda: f"finished {result.id}" in (log.read_text() if log.exists() else ""), timeout=10,
             message="the worker's task_finished signal")
    assert log.read_text().splitlines() == [f"started {result.id} RUNNING", f"finished {result.id} SUCCESSFUL"]


def test_an_unknown_result_id_does_not_exist():
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(uuid.uuid4()))
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("not-an-id")
