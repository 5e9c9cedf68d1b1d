"""Dashboard forms: the submit form, generated from a job kind's parameter JSON schema.

Forms here only turn text into typed values; what is valid is the kind's parameter model's
to say (through services.job_submit), and its errors are put back next to their fields.
"""
from __future__ import annotations

from datetime import timezone as dt_timezone

from django import forms
from django.contrib.humanize.templatetags.humanize import intcomma

from ..registry import JobKind

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
