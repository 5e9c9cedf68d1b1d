"""The prepared statements write the row save() would write, and replace a row that has the same key."""
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from jobs.services import statements
from jobs.models import Job

pytestmark = pytest.mark.django_db


def job_like(user, **overrides):
    when = timezone.now() - timedelta(minutes=5)
    values = dict(id=uuid.uuid4(), kind="count_primes", params={"limit": 10, "nested": {"a": [1, 2.5, None]}},
                  owner=user, queue="cpu", priority=7, idempotency_key="key-" + uuid.uuid4().hex,
                  attempt_limit=3, created_at=when, run_at=when + timedelta(seconds=30))
    return Job(**{**values, **overrides})


def test_a_prepared_insert_writes_what_save_writes(user):
    by_orm = job_like(user)
    by_orm.save(force_insert=True)
    by_statement = job_like(user, params=by_orm.params, created_at=by_orm.created_at, run_at=by_orm.run_at)
    statements.Insert(by_statement).run()

    def stored(job):
        """The row as the database holds it (not as the ORM reads it back): UUID and date formats count."""
        pk = Job._meta.pk.get_db_prep_value(job.pk, connection)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {Job._meta.db_table} WHERE id = %s", [pk])
            names = [column[0] for column in cursor.description]
            values = dict(zip(names, cursor.fetchone()))
        return {k: v for k, v in values.items() if k not in ("id", "idempotency_key", "updated_at")}

    assert stored(by_statement) == stored(by_orm)
    stored = Job.objects.get(pk=by_statement.pk)
    assert stored.updated_at is not None and stored.params == by_orm.params and stored.owner == user
    # The instance now stands for a stored row: saving it again updates, it does not insert twice.
    assert not by_statement._state.adding
    by_statement.priority = 1
    by_statement.save()
    assert Job.objects.get(pk=by_statement.pk).priority == 1


def test_a_unique_key_is_still_enforced(user):
    from django.db import IntegrityError, transaction

    first = job_like(user)
    statements.Insert(first).run()
    with pytest.raises(IntegrityError), transaction.atomic():
        statements.Insert(job_like(user, idempotency_key=first.idempotency_key)).run()


def test_replace_on_replaces_the_row_with_the_same_key():
    task_id = str(uuid.uuid4())
    statements.Insert(TaskResult(task_id=task_id, status="RETRY", result='{"retry": true}'), replace_on="task_id").run()
    statements.Insert(TaskResult(task_id=task_id, status="SUCCESS", result="42"), replace_on="task_id").run()
    rows = list(TaskResult.objects.filter(task_id=task_id).values_list("status", "result"))
    assert rows == [("SUCCESS", "42")]
