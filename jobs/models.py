"""The platform's tables: jobs, their failed attempts, API tokens, statistics rollups, paused queues and the audit
log."""
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class JobQuerySet(models.QuerySet):
    def visible_to(self, user):
        """Staff see every job; anyone else only their own."""
        return self if user.is_staff else self.filter(owner=user)

    def finished(self):
        return self.filter(status__in=Job.Status.finished())

    def due(self, now=None):
        """Jobs waiting for a message: queued ones whose run_at has come, and retrying ones whose run was lost."""
        now = now or timezone.now()
        return self.filter(published_at__isnull=True, tracked=False).filter(
            Q(status=Job.Status.QUEUED, run_at__lte=now) | Q(status=Job.Status.RETRYING, next_attempt_at__lte=now))

    def stale_queued(self, older_than):
        """Jobs published before `older_than` that no worker has claimed yet."""
        return self.filter(status__in=[Job.Status.QUEUED, Job.Status.RETRYING], published_at__lt=older_than,
                           tracked=False)

    def running_past_lease(self, now=None):
        """Running jobs whose worker stopped renewing their lease: it died, or lost the database."""
        return self.filter(status=Job.Status.RUNNING, lease_expires_at__lt=now or timezone.now(), tracked=False)

    def run_by(self, worker: str, job_ids):
        """Of `job_ids`, the running jobs that `worker` claimed."""
        return self.filter(pk__in=list(job_ids), status=Job.Status.RUNNING, worker=worker, tracked=False)

    def not_paused(self):
        """Jobs of queues that are not paused: those of a paused queue wait for its resume."""
        return self.exclude(queue__in=QueuePause.objects.values("queue"))


class Job(models.Model):
    """One unit of background work. Its id is also its Celery task id and TaskResult task_id."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        RETRYING = "retrying"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

        @classmethod
        def finished(cls):
            return [cls.SUCCEEDED, cls.FAILED, cls.CANCELLED]

        @classmethod
        def claimable(cls):
            return [cls.QUEUED, cls.RETRYING]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=200, help_text="A job kind, or a Django task's module path.")
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="jobs"
    )
    queue = models.CharField(max_length=64, default="default")
    priority = models.PositiveSmallIntegerField(default=5, help_text="0 (lowest) to 9 (highest).")
    idempotency_key = models.CharField(
        max_length=200, null=True, blank=True, help_text="A client's key: the same key from the same user is one job."
    )
    schedule_name = models.CharField(
        max_length=200, blank=True, default="", help_text="The periodic schedule that submitted this job, if any."
    )

    attempts = models.PositiveIntegerField(default=0, help_text="Runs started so far, over the job's whole life.")
    attempt_limit = models.PositiveIntegerField(
        default=1, help_text="A run may start only while attempts are below this; a manual retry raises it."
    )
    claim_token = models.UUIDField(
        null=True, blank=True, help_text="Set by each claim; later writes of that run must present it."
    )
    worker = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(
        null=True, blank=True,
        help_text="A running job's lease, renewed by its worker's heartbeat: once past, its worker is presumed dead.",
    )

    progress_done = models.PositiveBigIntegerField(default=0)
    progress_total = models.PositiveBigIntegerField(default=0)
    progress_message = models.CharField(max_length=500, blank=True, default="")

    error = models.TextField(blank=True, default="", help_text="The last failure, one line.")

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    run_at = models.DateTimeField(default=timezone.now, help_text="Not published before this time.")
    published_at = models.DateTimeField(null=True, blank=True, help_text="When its message was last sent.")
    started_at = models.DateTimeField(null=True, blank=True, help_text="When its latest run started.")
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="When a retrying job runs again.")
    tracked = models.BooleanField(
        default=False, help_text="A plain Celery task, recorded as Celery runs it (JOBS_TRACK_CELERY_TASKS): it "
        "keeps Celery's semantics, not the platform's claim and one-result guarantees.")

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_created_idx"),
            # A user's jobs of one status or kind: the dashboard's filters and its capped counts per status.
            models.Index(fields=["owner", "status", "-created_at"], name="job_owner_status_created_idx"),
            models.Index(fields=["owner", "kind", "-created_at"], name="job_owner_kind_created_idx"),
            models.Index(fields=["-created_at"], name="job_created_idx"),
            models.Index(fields=["status", "-created_at"], name="job_status_created_idx"),
            models.Index(fields=["kind", "-created_at"], name="job_kind_created_idx"),
            models.Index(fields=["status", "published_at"], name="job_status_published_idx"),
            models.Index(fields=["finished_at"], name="job_finished_idx"),
            # A schedule's run history: 150-575 ms at 1,000,000 jobs without it, 0.4-5.5 ms with it.
            models.Index(fields=["schedule_name", "-created_at"], name="job_schedule_created_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="job_owner_idempotency_key_uniq",
            ),
            models.CheckConstraint(condition=Q(priority__lte=9), name="job_priority_0_9"),
            models.CheckConstraint(condition=Q(attempts__lte=F("attempt_limit")), name="job_attempts_within_limit"),
        ]
        # Operators' actions beyond a user's own jobs (README, "Operations", suggests groups of them).
        permissions = [
            ("pause_queue", "Can pause and resume queues"),
            ("bulk_retry", "Can retry many jobs at once, by filter"),
            ("bulk_cancel", "Can cancel many jobs at once, by filter"),
            ("view_audit", "Can read the audit log of operators' actions"),
        ]

    def __str__(self):
        return f"{self.kind} {self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.Status.finished()

    @property
    def can_cancel(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING, self.Status.RETRYING)

    @property
    def can_retry(self) -> bool:
        return self.status in (self.Status.FAILED, self.Status.CANCELLED)

    @property
    def progress_percent(self) -> int:
        if self.status == self.Status.SUCCEEDED:
            return 100
        if not self.progress_total:
            return 0
        return min(100, int(100 * self.progress_done / self.progress_total))

    @property
    def wait_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (self.started_at - max(self.run_at, self.created_at)).total_seconds())

    @property
    def run_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


class JobError(models.Model):
    """One failed run of a job: what went wrong, kept after the job is retried."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="errors")
    attempt = models.PositiveIntegerField()
    error = models.TextField()
    exception_class = models.CharField(max_length=300, blank=True, default="",
                                       help_text="The exception's import path, when the run raised one.")
    traceback = models.TextField(blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["attempt", "id"]

    def __str__(self):
        return f"{self.job_id} attempt {self.attempt}: {self.error[:60]}"


class WorkerQuerySet(models.QuerySet):
    def alive(self, now=None, *, within: float):
        """Workers that have not stopped and sent a heartbeat within the last `within` seconds."""
        since = (now or timezone.now()) - timedelta(seconds=within)
        return self.filter(stopped_at__isnull=True, last_seen_at__gte=since)


class Worker(models.Model):
    """A Celery worker as its heartbeats describe it: what it consumes, runs and holds, and when it was last heard."""

    name = models.CharField(max_length=200, unique=True, help_text="Celery's node name, e.g. celery@host.")
    pid = models.PositiveIntegerField(default=0, help_text="Its main process.")
    queues = models.JSONField(default=list, blank=True)
    concurrency = models.PositiveIntegerField(default=0)
    running = models.PositiveIntegerField(default=0, help_text="Tasks running at the last heartbeat.")
    holding = models.JSONField(
        default=list, blank=True,
        help_text="Ids of the task messages it held at the last heartbeat (running, waiting for a slot or a countdown).",
    )
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="Set when it shut down cleanly.")

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class ApiToken(models.Model):
    """A bearer token for the API. Only its SHA-256 is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, default="")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12, help_text="The token's first characters, to tell tokens apart.")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class Follow(models.Model):
    """Who follows whom, for the fan-out job kind's timelines."""

    follower_id = models.PositiveBigIntegerField()
    author_id = models.PositiveBigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["author_id", "follower_id"], name="follow_uniq")]

    def __str__(self):
        return f"{self.follower_id} follows {self.author_id}"


class TimelineEntry(models.Model):
    """A post as it appears in one reader's timeline: what the fan-out kind writes."""

    reader_id = models.PositiveBigIntegerField()
    post_id = models.UUIDField(help_text="The fan-out job's id: one post per job.")
    author_id = models.PositiveBigIntegerField()
    text = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["reader_id", "post_id"], name="timeline_reader_post_uniq")]
        indexes = [models.Index(fields=["reader_id", "-created_at"], name="timeline_reader_idx")]

    def __str__(self):
        return f"post {self.post_id} for {self.reader_id}"


class JobRollup(models.Model):
    """Finished jobs of one kind over one period: counts by outcome, wait and run time summaries.

    A job is placed in the period of its finished_at. Wait and run times are known only for
    jobs that started (a job cancelled while queued has neither); the histograms count those
    jobs per fixed bucket (jobs.aggregation.BUCKET_EDGES), which is what p50 and p95 come from.
    """

    kind = models.CharField(max_length=100)
    period_start = models.DateTimeField(help_text="Start of the period (UTC).")
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    started = models.PositiveIntegerField(default=0, help_text="Finished jobs that had started: those with times.")
    wait_sum = models.FloatField(default=0.0, help_text="Seconds.")
    wait_max = models.FloatField(default=0.0, help_text="Seconds.")
    wait_histogram = models.JSONField(default=dict, blank=True, help_text="{bucket index: jobs} of wait times.")
    run_sum = models.FloatField(default=0.0, help_text="Seconds.")
    run_max = models.FloatField(default=0.0, help_text="Seconds.")
    run_histogram = models.JSONField(default=dict, blank=True, help_text="{bucket index: jobs} of run times.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        ordering = ["-period_start", "kind"]

    def __str__(self):
        return f"{self.kind} {self.period_start:%Y-%m-%d %H:%M}: {self.finished} finished"

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled


class JobMinuteRollup(JobRollup):
    """Per-minute rollup of finished jobs per kind."""

    class Meta(JobRollup.Meta):
        constraints = [models.UniqueConstraint(fields=["period_start", "kind"], name="rollup_minute_uniq")]


class JobHourRollup(JobRollup):
    """Per-hour rollup of finished jobs per kind, the sum of that hour's minute rollups."""

    class Meta(JobRollup.Meta):
        constraints = [models.UniqueConstraint(fields=["period_start", "kind"], name="rollup_hour_uniq")]


class RollupWatermark(models.Model):
    """How far aggregation has read the jobs: every job up to (finished_at, job_id) is in the rollups."""

    name = models.CharField(max_length=50, primary_key=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    job_id = models.UUIDField(null=True, blank=True)
    jobs_counted = models.PositiveBigIntegerField(default=0, help_text="Jobs folded into the rollups so far.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.name} up to {self.finished_at}"


class QueuePause(models.Model):
    """A paused queue: workers take none of its jobs (running ones finish) until it is resumed. Submissions are
    still accepted, up to the queue's limit. The row is the truth that every worker, also one started later,
    reads; its absence means the queue runs."""

    queue = models.CharField(max_length=64, unique=True)
    paused_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                  related_name="+")
    paused_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["queue"]

    def __str__(self):
        return f"{self.queue} paused since {self.paused_at:%Y-%m-%d %H:%M:%S}"


class AuditEntry(models.Model):
    """One operator's action: who did what, to which target or filter, to how many jobs, and when."""

    class Action(models.TextChoices):
        QUEUE_PAUSE = "queue_pause", "Paused a queue"
        QUEUE_RESUME = "queue_resume", "Resumed a queue"
        JOB_RETRY = "job_retry", "Retried a job"
        JOB_CANCEL = "job_cancel", "Cancelled a job"
        BULK_RETRY = "bulk_retry", "Retried jobs by filter"
        BULK_CANCEL = "bulk_cancel", "Cancelled jobs by filter"
        TOKEN_REVOKE = "token_revoke", "Revoked an API token"
        SCHEDULE_CREATE = "schedule_create", "Created a schedule"
        SCHEDULE_CHANGE = "schedule_change", "Changed a schedule"
        SCHEDULE_DELETE = "schedule_delete", "Deleted a schedule"
        SCHEDULE_PAUSE = "schedule_pause", "Paused a schedule"
        SCHEDULE_RESUME = "schedule_resume", "Resumed a schedule"
        SCHEDULE_RUN = "schedule_run", "Ran a schedule now"

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="audit_entries")
    actor_name = models.CharField(max_length=150, blank=True, default="",
                                  help_text="The actor's username then: kept when the user is renamed or deleted.")
    action = models.CharField(max_length=32, choices=Action.choices)
    target = models.CharField(max_length=300, blank=True, default="",
                              help_text="What was acted on, as type:id (queue:cpu, job:<id>, token:<prefix>, "
                                        "schedule:<name>); empty for a bulk action, which has a filter.")
    filter = models.JSONField(default=dict, blank=True, help_text="A bulk action's filter, as given.")
    count = models.PositiveIntegerField(null=True, blank=True,
                                        help_text="How many jobs it changed (bulk: so far, batch by batch).")
    detail = models.JSONField(default=dict, blank=True, help_text="More about it: a bulk action's matched count.")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["-at", "-id"], name="audit_at_idx"),
            models.Index(fields=["action", "-at"], name="audit_action_at_idx"),
            models.Index(fields=["actor_name", "-at"], name="audit_actor_at_idx"),
            models.Index(fields=["target", "-at"], name="audit_target_at_idx"),
        ]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name or '-'} {self.action} {self.target}"
