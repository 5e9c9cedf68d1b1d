"""Dashboard forms: the submit form, generated from a job kind's parameter JSON schema.

Forms here only turn text into typed values; what is valid is the kind's parameter model's
to say (through services.job_submit), and its errors are put back next to their fields.
"""
from __future__ import annotations

from datetime import timezone as dt_timezone

from django import forms
from django.contrib.humanize.templatetags.humanize import intcomma

from ..registry import JobKind
from ..services.schedules import MAX_EVERY_SECONDS

PARAMS_PREFIX = "params"
# Longer strings than this get a text area rather than a one-line input.
TEXTAREA_FROM_LENGTH = 200


def _field_schema(schema: dict, prop: dict) -> tuple[dict, bool]:
    """The schema of one property with `Optional[...]` and `$ref` resolved, and whether it may be null."""
    nullable = False
    options = prop.get("anyOf") or prop.get("oneOf")
    if options:
        non_null = [o for o in options if o.get("type") != "null"]
        nullable = len(non_null) < len(options)
        prop = {**prop, **(non_null[0] if len(non_null) == 1 else {})}
    ref = prop.get("$ref", "")
    if ref.startswith("#/$defs/"):
        prop = {**schema.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {}), **prop}
    return prop, nullable


# The largest integer every JSON client reads exactly (2**53); schemas bound ids with it.
JSON_SAFE_INTEGER = 2**53


def _fmt(number) -> str:
    return intcomma(number) if isinstance(number, int) else f"{number:g}"


def _constraints(prop: dict) -> str:
    """The bounds of a field in words, for its help text."""
    low, high = prop.get("minimum"), prop.get("maximum")
    if high is not None and high >= JSON_SAFE_INTEGER:
        high = None  # a bound for JSON clients (ids), not one a person needs to read
    if low is not None and high is not None:
        return f"From {_fmt(low)} to {_fmt(high)}."
    if low is not None:
        return f"At least {_fmt(low)}."
    if high is not None:
        return f"At most {_fmt(high)}."
    min_len, max_len = prop.get("minLength"), prop.get("maxLength")
    if max_len is not None:
        return f"Up to {_fmt(max_len)} characters."
    if min_len:
        return f"At least {_fmt(min_len)} characters."
    return ""


def _number_attrs(prop: dict, step: str) -> dict:
    attrs = {"step": step, "inputmode": "numeric" if step == "1" else "decimal"}
    for key, attr in (("minimum", "min"), ("maximum", "max")):
        if prop.get(key) is not None:
            attrs[attr] = prop[key]
    return attrs


def _form_field(name: str, prop: dict, *, required: bool) -> forms.Field:
    kind = prop.get("type")
    help_text = " ".join(part for part in (prop.get("description", ""), _constraints(prop)) if part)
    common = {
        "label": name.replace("_", " ").capitalize(),
        "help_text": help_text,
        "required": required,
        "initial": prop.get("default"),
    }
    if "enum" in prop:
        choices = [(v, v) for v in prop["enum"]]
        return forms.ChoiceField(choices=choices if required else [("", "—"), *choices], **common)
    if kind == "integer":
        return forms.IntegerField(widget=forms.NumberInput(attrs=_number_attrs(prop, "1")), **common)
    if kind == "number":
        return forms.FloatField(widget=forms.NumberInput(attrs=_number_attrs(prop, "any")), **common)
    if kind == "boolean":
        return forms.BooleanField(**{**common, "required": False})
    if kind == "string":
        long_text = prop.get("maxLength") is None or prop["maxLength"] > TEXTAREA_FROM_LENGTH
        widget = forms.Textarea(attrs={"rows": 6}) if long_text else forms.TextInput()
        return forms.CharField(widget=widget, strip=False, **common)
    # Lists, objects and anything else: typed as JSON.
    common["help_text"] = " ".join(part for part in (help_text, "As JSON.") if part)
    return forms.JSONField(widget=forms.Textarea(attrs={"rows": 4, "class": "mono"}), **common)


class ParamsForm(forms.Form):
    """A kind's parameters; subclasses are generated per kind by `params_form_class`."""

    kind: JobKind

    def params(self) -> dict:
        """The typed values, leaving out blank optional fields so that the kind's defaults apply."""
        return {
            name: value
            for name, value in self.cleaned_data.items()
            if not (value in (None, "") and not self.fields[name].required)
        }


def params_form_class(kind: JobKind) -> type[ParamsForm]:
    """A form class with one field per parameter of `kind`: types, defaults, bounds and help from its schema."""
    schema = kind.params_schema()
    required = set(schema.get("required", []))
    fields = {}
    for name, raw in schema.get("properties", {}).items():
        prop, nullable = _field_schema(schema, raw)
        fields[name] = _form_field(name, prop, required=name in required and not nullable)
    return type(f"{kind.name.title().replace('_', '')}ParamsForm", (ParamsForm,), {**fields, "kind": kind})


def params_form(kind: JobKind, data=None) -> ParamsForm:
    return params_form_class(kind)(data, prefix=PARAMS_PREFIX)


class SubmitOptionsForm(forms.Form):
    """What every submission has besides its parameters."""

    kind = forms.CharField(widget=forms.HiddenInput, max_length=200)
    priority = forms.TypedChoiceField(
        label="Priority",
        choices=[("", "The kind's default")] + [(str(p), str(p)) for p in range(9, -1, -1)],
        coerce=int,
        empty_value=None,
        required=False,
        help_text="9 runs first, 0 last.",
    )
    run_at = forms.DateTimeField(
        label="Start after",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"],
        help_text="UTC. Leave empty to start as soon as a worker is free.",
    )

    def __init__(self, *args, kind: JobKind | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if kind is not None and kind.inline:
            self.fields["run_at"].help_text = ("UTC. Leave empty to run it at once, in this request; a later time "
                                               "queues it, and a worker runs it then.")

    def clean_run_at(self):
        value = self.cleaned_data["run_at"]
        # The site's time zone is UTC; a browser's datetime-local has no zone of its own.
        return value.astimezone(dt_timezone.utc) if value is not None else None


def apply_input_errors(errors: list[dict], *, options: SubmitOptionsForm, params: ParamsForm | None) -> None:
    """Put each error from services.JobInputError next to the field it names."""
    for error in errors:
        loc = [str(part) for part in error.get("loc", [])]
        message = error.get("msg", "is not valid")
        if loc[:1] == ["params"] and params is not None:
            field = loc[1] if len(loc) > 1 and loc[1] in params.fields else None
            detail = f" (at {'.'.join(loc[2:])})" if field and len(loc) > 2 else ""
            params.add_error(field, message + detail)
        elif loc[:1] and loc[0] in options.fields and loc[0] != "kind":
            options.add_error(loc[0], message)
        else:
            options.add_error(None, message)


class ApiTokenForm(forms.Form):
    name = forms.CharField(
        label="Name", max_length=100, required=False,
        help_text="What the token is for, so that you know which one to revoke later.",
    )


# --- Schedules ------------------------------------------------------------------------

CATCH_UP_CHOICES = [
    ("once", "Run once: one run as soon as beat is back, however many it missed"),
    ("skip", "Skip: no run for the missed times; the next regular one comes as usual"),
]


class ScheduleForm(forms.Form):
    """A schedule's name, timing and policies; its job's parameters are the kind's own form."""

    name = forms.CharField(label="Name", max_length=200,
                           help_text="Unique. Each run's job names it, in the job list and on its page.")
    timing = forms.ChoiceField(label="Runs", choices=[("interval", "At an interval"), ("crontab", "At set times (crontab)")],
                               initial="interval", widget=forms.RadioSelect)
    every_seconds = forms.IntegerField(
        label="Every (seconds)", required=False, min_value=1, max_value=MAX_EVERY_SECONDS,
        widget=forms.NumberInput(attrs={"step": "1", "inputmode": "numeric"}),
        help_text="60 is every minute, 3600 every hour, 86400 every day.")
    crontab = forms.CharField(
        label="Crontab", required=False, max_length=64, widget=forms.TextInput(attrs={"class": "mono",
                                                                                       "spellcheck": "false"}),
        help_text="minute hour day-of-month month day-of-week, e.g. “30 2 * * *” (02:30 daily) or “0 9 * * 1-5” "
                  "(09:00 on weekdays, 0 being Sunday).")
    crontab_timezone = forms.ChoiceField(
        label="Crontab time zone", choices=(), initial="UTC",
        help_text="The crontab's times are in this zone, summer and winter alike: 09:00 in Europe/Berlin stays "
                  "09:00 there when the clocks change (and moves by an hour in UTC).")
    catch_up = forms.ChoiceField(label="Missed runs", choices=CATCH_UP_CHOICES, initial="once",
                                 widget=forms.RadioSelect,
                                 help_text="Runs are missed when no beat runs at their time (it was stopped).")
    run_as = forms.ChoiceField(label="Run as", required=False, choices=(),
                               help_text="Whose jobs the runs are: they see them in their dashboard.")
    paused = forms.BooleanField(label="Start paused", required=False,
                                help_text="No runs until you resume it on the schedule's page.")

    def __init__(self, *args, zones=(), run_as_choices=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["crontab_timezone"].choices = [(z, z) for z in zones]
        if run_as_choices is None:
            del self.fields["run_as"]
        else:
            self.fields["run_as"].choices = run_as_choices

    def clean(self):
        data = super().clean()
        timing = data.get("timing")
        if timing == "interval" and data.get("every_seconds") is None and "every_seconds" not in self.errors:
            self.add_error("every_seconds", "How many seconds between runs?")
        if timing == "crontab" and not data.get("crontab") and "crontab" not in self.errors:
            self.add_error("crontab", "Give the crontab's five fields.")
        return data


def apply_schedule_errors(errors: list[dict], *, form: ScheduleForm, params: ParamsForm | None) -> None:
    """Put each error of services.schedule_create next to the field it names."""
    for error in errors:
        loc = [str(part) for part in error.get("loc", [])]
        message = error.get("msg", "is not valid")
        if loc[:1] == ["params"] and params is not None:
            field = loc[1] if len(loc) > 1 and loc[1] in params.fields else None
            params.add_error(field, message)
        elif loc[:1] and loc[0] in form.fields:
            form.add_error(loc[0], message)
        else:
            form.add_error(None, message)


# --- Timeline ---------------------------------------------------------------------------


class TimelinePostForm(forms.Form):
    """A post for the fan-out kind: its text, and (for staff) whose post it is."""

    text = forms.CharField(label="Post", max_length=500, widget=forms.Textarea(attrs={"rows": 3}),
                           help_text="Up to 500 characters.")
    author = forms.TypedChoiceField(
        label="Author", coerce=int, choices=(),
        help_text="Whose post this is. It is on the author's own timeline at once; a job then writes it into the "
                  "timeline of each user who follows the author, in batches.")
    ensure_followers = forms.IntegerField(
        label="Give the author followers first (demo)", required=False, min_value=0, max_value=1_000_000, initial=0,
        widget=forms.NumberInput(attrs={"step": "1", "inputmode": "numeric"}),
        help_text="The job first makes sure the author has at least this many followers (demo followers: the ids "
                  "after the author's).")
    batch_size = forms.IntegerField(
        label="Timelines written per batch", required=False, min_value=1, max_value=5000, initial=500,
        widget=forms.NumberInput(attrs={"step": "1", "inputmode": "numeric"}))

    def __init__(self, *args, authors=None, **kwargs):
        """`authors`: (id, username) of the users one may post as; None: oneself only."""
        super().__init__(*args, **kwargs)
        if authors is None:
            del self.fields["author"]  # you post as yourself
        else:
            self.fields["author"].choices = [(pk, f"{name} (user id {pk})") for pk, name in authors]


# --- Bulk actions ------------------------------------------------------------------------

_DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]


def _utc_field(label: str, help_text: str) -> forms.DateTimeField:
    return forms.DateTimeField(label=label, required=False, input_formats=_DATETIME_FORMATS, help_text=help_text,
                               widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))


class BulkActionForm(forms.Form):
    """A bulk action and its filter, as the query string of its preview carries them (and the confirmation's POST)."""

    ACTIONS = [("retry", "Retry: run failed or cancelled jobs again"),
               ("cancel", "Cancel: stop queued, retrying or running jobs")]

    action = forms.ChoiceField(label="Action", choices=ACTIONS, widget=forms.RadioSelect)
    status = forms.ChoiceField(label="Status", required=False,
                               help_text="Within the action's own states; any of them when empty.")
    kind = forms.ChoiceField(label="Kind", required=False)
    queue = forms.ChoiceField(label="Queue", required=False)
    owner = forms.CharField(label="Owner", required=False, max_length=150,
                            help_text="A username; everyone's jobs when empty.")
    created_after = _utc_field("Created at or after", "UTC.")
    created_before = _utc_field("Created before", "UTC.")
    search = forms.CharField(label="Parameters or error contain", required=False, max_length=200,
                             help_text="Ignoring case, e.g. a customer id or an exception's name.")

    def __init__(self, *args, actions: list[str], kinds: list[tuple[str, str]], queues: list[str], staff: bool,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [choice for choice in self.ACTIONS if choice[0] in actions]
        self.fields["status"].choices = [("", "Any")] + [(s, s) for s in ("failed", "cancelled", "queued",
                                                                             "retrying", "running")]
        self.fields["kind"].choices = [("", "Any kind")] + kinds
        self.fields["queue"].choices = [("", "Any queue")] + [(q, q) for q in queues]
        if not staff:
            del self.fields["owner"]  # anyone but staff acts on their own jobs only

    def clean_created_after(self):
        return self._utc(self.cleaned_data["created_after"])

    def clean_created_before(self):
        return self._utc(self.cleaned_data["created_before"])

    def clean_owner(self):
        return self.cleaned_data["owner"].strip()

    @staticmethod
    def _utc(value):
        # The site's time zone is UTC; a browser's datetime-local has no zone of its own.
        return value.astimezone(dt_timezone.utc) if value is not None else None

    def query(self) -> dict[str, str]:
        """The action and filter as given, for links and the confirmation's hidden fields."""
        return {name: str(self.data.get(name, "")) for name in self.fields if self.data.get(name)}
