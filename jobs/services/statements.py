"""The writes on every job's path, as SQL built once per database instead of compiled by the ORM per row:
the Job's insert at submit, the claim (an UPDATE ... RETURNING the attempt), and the finish (the Job's
UPDATE and its TaskResult's upsert).

They pay (bench/bench_forms.py; bench/README.md, "Complexity that pays"): the ORM spends about half a
millisecond turning one of these statements into SQL, several times what the database needs to
run it, and on SQLite the write lock is held from BEGIN to COMMIT, so the workers' and the
submitters' writes queue behind each other's compiling. End to end against bare Celery, same run:
with these statements SQLite 1.11x / PostgreSQL 1.35x, with the ORM 0.66x / 0.91x.

Each statement is the one the ORM would run: the same columns, each value converted by its field
(pre_save, then get_db_prep_save), so defaults, auto_now and JSON work as with save(). No
pre_save/post_save signal is sent: use them for models that have none (Job and TaskResult).
Databases other than PostgreSQL and SQLite 3.35+ get the ORM's own statements.
"""
from __future__ import annotations

import functools
import sqlite3
import uuid
from datetime import datetime

from django.db import connections, router, transaction
from django.db.models import F, Model, Q

from ..models import Job, QueuePause

S = Job.Status


def supported(alias: str) -> bool:
    """UPDATE ... RETURNING and INSERT ... ON CONFLICT DO UPDATE: PostgreSQL, and SQLite from 3.35."""
    vendor = connections[alias].vendor
    return vendor == "postgresql" or (vendor == "sqlite" and sqlite3.sqlite_version_info >= (3, 35))


def _columns(model: type[Model]):
    return [f for f in model._meta.concrete_fields if f is not model._meta.auto_field]


@functools.cache
def _insert_sql(model: type[Model], alias: str, conflict_field: str | None) -> str:
    quote = connections[alias].ops.quote_name
    columns = [quote(f.column) for f in _columns(model)]
    sql = (f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(columns)}) "
           f"VALUES ({', '.join(['%s'] * len(columns))})")
    if conflict_field is not None:
        target = quote(model._meta.get_field(conflict_field).column)
        sql += f" ON CONFLICT ({target}) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns
                                                                   if c != target)
    return sql


class Insert:
    """The INSERT of `obj` (replacing the row with the same `replace_on`), its values read now:
    prepare it before the transaction, run it inside."""

    def __init__(self, obj: Model, *, replace_on: str | None = None):
        self.obj, self.replace_on = obj, replace_on
        self.alias = router.db_for_write(type(obj), instance=obj)
        connection = connections[self.alias]
        self.fast = supported(self.alias)
        if self.fast:
            self.sql = _insert_sql(type(obj), self.alias, replace_on)
            self.params = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in _columns(type(obj))]

    def run(self) -> None:
        if not self.fast:
            if self.replace_on is not None:
                type(self.obj)._default_manager.using(self.alias).filter(
                    **{self.replace_on: getattr(self.obj, self.replace_on)}).delete()
            self.obj.save(force_insert=True, using=self.alias)
            return
        with connections[self.alias].cursor() as cursor:
            cursor.execute(self.sql, self.params)
        self.obj._state.adding = False
        self.obj._state.db = self.alias


def _col(alias: str):
    quote = connections[alias].ops.quote_name
    return lambda name: quote(Job._meta.get_field(name).column)


@functools.cache
def _claim_sql(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    col, table = _col(alias), quote(Job._meta.db_table)
    status, attempts = col("status"), col("attempts")
    # A paused queue's job is not claimed (the run hands it back). A table of a few rows: measured on SQLite,
    # 147 us a claim with this condition against 143 us without.
    paused = f"SELECT {quote(QueuePause._meta.get_field('queue').column)} FROM {quote(QueuePause._meta.db_table)}"
    return (
        f"UPDATE {table} SET {status} = %s, {col('claim_token')} = %s, {attempts} = {attempts} + 1, "
        f"{col('worker')} = %s, {col('started_at')} = %s, {col('lease_expires_at')} = %s, "
        f"{col('next_attempt_at')} = NULL, {col('updated_at')} = %s "
        f"WHERE {col('id')} = %s AND {attempts} < {col('attempt_limit')} AND {col('run_at')} <= %s "
        f"AND ({status} IN ({', '.join(['%s'] * len(S.claimable()))}) "
        f"OR ({status} = %s AND {col('lease_expires_at')} < %s)) AND {col('queue')} NOT IN ({paused}) "
        f"RETURNING {attempts}"
    )


def claimable(now: datetime) -> Q:
    """Queued or retrying, or running past its lease (its worker is gone)."""
    return Q(status__in=S.claimable()) | Q(status=S.RUNNING, lease_expires_at__lt=now)


def claim(*, job_id: str, token: uuid.UUID, worker: str, now: datetime, lease: datetime) -> int | None:
    """The claim's conditional UPDATE; the run's attempt number, or None when nothing was claimed (a job of a
    paused queue is not claimed either)."""
    alias = router.db_for_write(Job)
    if not supported(alias):
        with transaction.atomic(using=alias):
            if not Job.objects.filter(pk=job_id, attempts__lt=F("attempt_limit"), run_at__lte=now).filter(
                    claimable(now)).not_paused().update(status=S.RUNNING, claim_token=token, attempts=F("attempts") + 1,
                                           worker=worker, started_at=now, lease_expires_at=lease,
                                           next_attempt_at=None, updated_at=now):
                return None
            return Job.objects.filter(pk=job_id).values_list("attempts", flat=True).get()
    connection, field = connections[alias], Job._meta.get_field
    at = field("started_at")
    params = [S.RUNNING, field("claim_token").get_db_prep_value(token, connection), worker,
              at.get_db_prep_value(now, connection), at.get_db_prep_value(lease, connection),
              at.get_db_prep_value(now, connection), Job._meta.pk.get_db_prep_value(job_id, connection),
              at.get_db_prep_value(now, connection), *S.claimable(), S.RUNNING, at.get_db_prep_value(now, connection)]
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(alias), params)
        row = cursor.fetchone()
    return row[0] if row else None


@functools.cache
def _finish_sql(alias: str) -> str:
    col, table = _col(alias), connections[alias].ops.quote_name(Job._meta.db_table)
    return (
        f"UPDATE {table} SET {col('status')} = %s, {col('finished_at')} = %s, {col('claim_token')} = NULL, "
        f"{col('lease_expires_at')} = NULL, {col('progress_done')} = {col('progress_total')}, "
        f"{col('updated_at')} = %s WHERE {col('id')} = %s AND {col('claim_token')} = %s AND {col('status')} = %s"
    )


class Finish:
    """The finish's conditional UPDATE (running -> succeeded, for the run holding `token`), prepared now."""

    def __init__(self, *, job_id: str, token: uuid.UUID, now: datetime):
        self.job_id, self.token, self.now = job_id, token, now
        self.alias = router.db_for_write(Job)
        connection, field = connections[self.alias], Job._meta.get_field
        at = field("finished_at")
        self.params = [S.SUCCEEDED, at.get_db_prep_value(now, connection), at.get_db_prep_value(now, connection),
                       Job._meta.pk.get_db_prep_value(job_id, connection),
                       field("claim_token").get_db_prep_value(token, connection), S.RUNNING]

    def run(self) -> bool:
        """True when the run still owned the job (it is finished now)."""
        if not supported(self.alias):
            return bool(Job.objects.filter(pk=self.job_id, claim_token=self.token, status=S.RUNNING).update(
                status=S.SUCCEEDED, finished_at=self.now, claim_token=None, lease_expires_at=None,
                progress_done=F("progress_total"), updated_at=self.now))
        with connections[self.alias].cursor() as cursor:
            cursor.execute(_finish_sql(self.alias), self.params)
            return bool(cursor.rowcount)
