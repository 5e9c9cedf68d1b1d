"""Admin: jobs with retry and cancel actions (through the services), tokens, read-only errors and rollups, schedules."""
import json

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django_celery_beat.admin import PeriodicTaskAdmin, PeriodicTaskForm, TaskSelectWidget
from django_celery_beat.models import PeriodicTask

from .. import services
from ..aggregation import Summary
from ..models import ApiToken, AuditEntry, Job, JobError, JobHourRollup, JobMinuteRollup, RollupWatermark
from ..registry import all_kinds, get_kind
from ..tasks import SCHEDULED_JOB_TASK


class JobErrorInline(admin.TabularInline):
    model = JobError
    extra = 0
    can_delete = False
    readonly_fields = ("attempt", "error", "traceback", "worker", "created_at")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "owner", "queue", "priority", "attempts", "created_at", "started_at",
                    "finished_at")
    list_filter = ("status", "kind", "queue")
    search_fields = ("=id", "idempotency_key", "schedule_name")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobErrorInline]
    actions = ["retry_jobs", "cancel_jobs"]
    show_full_result_count = False  # no COUNT(*) over a large table on every page

    def has_add_permission(self, request):
        return False  # jobs are submitted through the service, never typed in

    @admin.action(description="Retry selected failed or cancelled jobs")
    def retry_jobs(self, request, queryset):
        self._apply(request, queryset, services.job_retry, "retried")

    @admin.action(description="Cancel selected unfinished jobs")
    def cancel_jobs(self, request, queryset):
        self._apply(request, queryset, services.job_cancel, "cancelled")

    def _apply(self, request, queryset, action, verb):
        done, skipped = 0, []
        for job in queryset:
            try:
                action(job=job, actor=request.user)
                done += 1
            except services.JobStateError as exc:
                skipped.append(f"{job.id}: {exc}")
        self.message_user(request, f"{done} job(s) {verb}.", messages.SUCCESS)
        if skipped:
            self.message_user(request, "Skipped: " + "; ".join(skipped[:10]), messages.WARNING)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    # Revoked through the action, which records who did it in the audit log.
    readonly_fields = ("key_hash", "prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke_tokens"]

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request, queryset):
        for token in queryset.select_related("user"):
            services.api_token_revoke(token=token, actor=request.user)
        self.message_user(request, "The selected tokens were revoked; they no longer authenticate.", messages.SUCCESS)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log is written by the services only: the admin shows it, nobody edits it."""

    list_display = ("at", "actor_name", "action", "target", "count")
    list_filter = ("action",)
    search_fields = ("actor_name", "target")
    date_hierarchy = "at"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RollupAdmin(admin.ModelAdmin):
    """Rollups are written by aggregation only: the admin shows them, nobody edits them."""

    list_display = ("period_start", "kind", "succeeded", "failed", "cancelled", "wait_p95", "run_p95")
    list_filter = ("kind",)
    date_hierarchy = "period_start"
    ordering = ("-period_start", "kind")
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="wait p95 (s)")
    def wait_p95(self, obj):
        return _seconds(Summary.of_rollup(obj).wait.quantile(0.95))

    @admin.display(description="run p95 (s)")
    def run_p95(self, obj):
        return _seconds(Summary.of_rollup(obj).run.quantile(0.95))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


admin.site.register(JobMinuteRollup, RollupAdmin)
admin.site.register(JobHourRollup, RollupAdmin)


@admin.register(RollupWatermark)
class RollupWatermarkAdmin(RollupAdmin):
    list_display = ("name", "finished_at", "job_id", "jobs_counted", "updated_at")
    list_filter = ()
    date_hierarchy = None
    ordering = ("name",)


class ScheduleTaskSelect(TaskSelectWidget):
    """The registered tasks, less the kinds' own tasks: those run a job by id and are scheduled by kind."""

    def tasks_as_choices(self):
        kind_tasks = {kind.task_name for kind in all_kinds()}
        return tuple((value, label) for value, label in super().tasks_as_choices() if value not in kind_tasks)


def _kind_choices():
    return [("", "(none: run the task chosen above)")] + [(k.name, f"{k.title} ({k.name})") for k in all_kinds()]


class ScheduleForm(PeriodicTaskForm):
    """django-celery-beat's form, plus a job kind and its parameters, checked against the kind's schema."""

    job_kind = forms.ChoiceField(
        label="Job kind", required=False, choices=_kind_choices,
        help_text="Each run submits one job of this kind, like the API does; the job names this schedule.",
    )
    job_params = forms.JSONField(
        label="Job parameters", required=False, initial=dict,
        help_text="A JSON object, checked against the kind's parameter schema when the schedule is saved.",
    )
    run_as = forms.ModelChoiceField(
        label="Run as", required=False, queryset=get_user_model().objects.filter(is_active=True),
        help_text="The jobs' owner, who sees them in the dashboard. Empty: the jobs have no owner (staff see them).",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["regtask"].widget = ScheduleTaskSelect()
        instance = self.instance
        if instance.pk and instance.task == SCHEDULED_JOB_TASK:
            try:
                saved = json.loads(instance.kwargs or "{}")
            except ValueError:
                saved = {}
            self.initial.setdefault("job_kind", saved.get("kind", ""))
            self.initial.setdefault("job_params", saved.get("params", {}))
            if saved.get("owner"):
                self.initial.setdefault(
                    "run_as", get_user_model().objects.filter(username=saved["owner"]).values_list("pk", flat=True)
                    .first())
            self.initial["regtask"] = ""

    def clean(self):
        kind_name = self.cleaned_data.get("job_kind")
        if kind_name:
            self.cleaned_data["regtask"] = SCHEDULED_JOB_TASK
        data = super().clean()
        task = data.get("task")
        if task == SCHEDULED_JOB_TASK:
            self._clean_job(data, kind_name)
        elif get_kind(str(task).removeprefix("jobs.")) is not None:
            self.add_error("job_kind", f"{task} runs one existing job: schedule the kind by choosing it here instead.")
        return data

    def _clean_job(self, data: dict, kind_name: str) -> None:
        kind = get_kind(kind_name or "")
        if kind is None:
            self.add_error("job_kind", "Choose the job kind each run submits.")
            return
        if "job_params" not in data:
            return  # not JSON: the field has said so
        try:
            params = services.validate_params(kind, data.get("job_params") or {})
        except services.JobInputError as exc:
            for error in exc.errors:
                where = ".".join(map(str, error["loc"][1:])) or "parameters"
                self.add_error("job_params", f"{where}: {error['msg']}")
            return
        kwargs = {"kind": kind.name, "params": params}
        if data.get("run_as") is not None:
            kwargs["owner"] = data["run_as"].get_username()
        data["args"] = "[]"
        data["kwargs"] = json.dumps(kwargs)


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class ScheduleAdmin(PeriodicTaskAdmin):
    """Schedules as django-celery-beat shows them, with job kinds offered by name."""

    form = ScheduleForm
    list_display = ("name", "enabled", "scheduled_work", "scheduler", "start_time", "last_run_at", "one_off")
    fieldsets = (
        PeriodicTaskAdmin.fieldsets[0],
        ("Job", {
            "fields": ("job_kind", "job_params", "run_as"),
            "description": "To schedule a job kind, choose it here and leave the task above empty.",
            "classes": ("extrapretty", "wide"),
        }),
        *PeriodicTaskAdmin.fieldsets[1:],
    )

    @admin.display(description="runs")
    def scheduled_work(self, obj):
        if obj.task == SCHEDULED_JOB_TASK:
            try:
                return f"job: {json.loads(obj.kwargs or '{}').get('kind', '?')}"
            except ValueError:
                return "job: ?"
        return obj.task
