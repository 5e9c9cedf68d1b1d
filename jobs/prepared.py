"""Inserts on every job's path, with their SQL built once per model and database instead of per row.

The ORM spends about half a millisecond here turning one INSERT into SQL, several times what the
database needs to run it; on SQLite the write lock is held meanwhile, so the writes of each job
(submit, claim, finish) queue behind each other's compiling. The statement is the one the ORM
would run: the same columns, each value converted by its field (pre_save, then
get_db_prep_save), so defaults, auto_now and JSON work as with save().
"""
from __future__ import annotations

import functools

from django.db import connections, router
from django.db.models import Model


def supported(connection, *, sqlite_from: tuple[int, int]) -> bool:
    """Whether the database has a statement PostgreSQL has, and SQLite from `sqlite_from` on."""
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= sqlite_from
    return False


def upsert_supported(connection) -> bool:
    """INSERT ... ON CONFLICT DO UPDATE."""
    return supported(connection, sqlite_from=(3, 24))


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
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != target)
        sql += f" ON CONFLICT ({target}) DO UPDATE SET {updates}"
    return sql


def prepare_insert(obj: Model, *, replace_on: str | None = None) -> tuple[str, list, str]:
    """The statement and parameters that insert `obj` (or replace the row with the same `replace_on`).

    Values are read now, so that the caller can prepare outside its transaction.
    """
    model = type(obj)
    alias = router.db_for_write(model, instance=obj)
    connection = connections[alias]
    params = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in _columns(model)]
    return _insert_sql(model, alias, replace_on), params, alias


def execute_insert(obj: Model, statement: tuple[str, list, str]) -> None:
    sql, params, alias = statement
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
    obj._state.adding = False
    obj._state.db = alias


def insert(obj: Model, *, replace_on: str | None = None) -> None:
    """Insert the row save(force_insert=True) would; with `replace_on`, replace a row that has its value.

    Unlike save(), no pre_save/post_save signal is sent and no save() override runs: use it for
    models that have neither (Job and TaskResult here). Models with an auto-incremented key get no
    key back: use it where the row is found by another field.
    """
    alias = router.db_for_write(type(obj), instance=obj)
    connection = connections[alias]
    if replace_on is not None and not upsert_supported(connection):
        type(obj)._default_manager.using(alias).filter(**{replace_on: getattr(obj, replace_on)}).delete()
        obj.save(force_insert=True, using=alias)
        return
    execute_insert(obj, prepare_insert(obj, replace_on=replace_on))
