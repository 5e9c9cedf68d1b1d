"""Admin: jobs with retry and cancel actions (through the services), tokens, read-only errors."""
from django.contrib import admin, messages

from . import services
from .models import ApiToken, Job, JobError


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
                action(job=job)
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
    readonly_fields = ("key_hash", "prefix", "created_at", "last_used_at")
