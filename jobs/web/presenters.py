"""How values are laid out for reading on the dashboard: results and parameters as fields, tables or JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timezone as dt_timezone

from django.contrib.humanize.templatetags.humanize import intcomma

# Tables of records longer than this show their first rows; the raw JSON has them all.
RESULT_TABLE_ROWS = 500
RAW_JSON_CHARS = 200_000


@dataclass
class ResultBlock:
    """One readable piece of a result: a list of fields, a table of records, or JSON text."""

    kind: str
    title: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    total_rows: int = 0
    text: str = ""


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _show(value, key: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and not key.lower().endswith("id"):
        return intcomma(value)
    if isinstance(value, float):
        return f"{value:,.6g}"
    return str(value)


def _records(value) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(r, dict) and all(_scalar(v) for v in r.values()) for r in value))


def _table(title: str, records: list[dict]) -> ResultBlock:
    columns = list(dict.fromkeys(key for record in records for key in record))
    rows = [[_show(r.get(c, ""), c) for c in columns] for r in records[:RESULT_TABLE_ROWS]]
    return ResultBlock("table", title=title, columns=columns, rows=rows, total_rows=len(records))


def raw_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)[:RAW_JSON_CHARS]


def present(value) -> list[ResultBlock]:
    """A JSON value laid out for reading: scalars as fields, lists of records as tables, the rest as JSON."""
    if value is None:
        return []
    if _records(value):
        return [_table("", value)]
    if not isinstance(value, dict):
        return [ResultBlock("json", text=raw_json(value))] if not _scalar(value) else [
            ResultBlock("fields", fields=[("value", _show(value))])]
    fields, blocks = [], []
    for key, item in value.items():
        if _scalar(item):
            fields.append((key.replace("_", " "), _show(item, key)))
        elif _records(item):
            blocks.append(_table(key.replace("_", " "), item))
        elif isinstance(item, list) and all(_scalar(v) for v in item) and len(item) <= 20:
            fields.append((key.replace("_", " "), ", ".join(_show(v) for v in item) or "—"))
        else:
            blocks.append(ResultBlock("json", title=key.replace("_", " "), text=raw_json(item)))
    return ([ResultBlock("fields", fields=fields)] if fields else []) + blocks


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --- Times in the reader's time zone --------------------------------------------------


@dataclass(frozen=True)
class LocalTime:
    """A moment as a page shows it: in the reader's time zone, with UTC for the hover text."""

    iso: str
    local: str
    utc: str


def local_time(value, zone) -> LocalTime | None:
    if value is None:
        return None
    return LocalTime(iso=value.isoformat(), local=value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z"),
                     utc=value.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))


def every_text(seconds: float) -> str:
    """An interval in words: "every 10 seconds", "every 2 hours", "every 90 seconds"."""
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    count = f"{seconds:g}"
    return "every second" if count == "1" else f"every {count} seconds"
