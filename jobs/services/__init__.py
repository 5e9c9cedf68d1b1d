"""Services: every write and every state transition of a job, and admission. Callers parse, call one, answer."""
from .audit import audit_record
from .errors import (BrokerUnavailable, IdempotencyConflict, JobInputError, JobStateError, NotPermitted, QueueFull,
                     ScheduleNameTaken)
from .errors import NotFound
from .operations import (BulkResult, JobFilter, jobs_bulk, jobs_matching, operator_groups_ensure, paused_queue_names,
                         queue_pause, queue_resume, worker_consumers_reconcile, worker_queues_to_leave)
from .recovery import delete_expired, recover_jobs
from .runs import (Claim, FailureOutcome, JobCancelled, JobContext, RunOutcome, execute_job, full_jitter_backoff,
                   job_claim, job_is_current, job_progress, job_run_failed, job_run_lost, job_succeed, worker_name)
from .schedules import (SCHEDULED_JOB_TASK, MissedRuns, schedule_create, schedule_dispatched, schedule_pause,
                        schedule_resume, schedule_run_now, schedules_catch_up)
from .submit import (SubmitResult, broker_priority, job_cancel, job_republish, job_retry, job_submit,
                     job_submit_scheduled, jobs_publish_due, validate_params)
from .timelines import timeline_post
from .tracking import (is_tracked, tracked_task_cancelled, tracked_task_failed, tracked_task_published,
                       tracked_task_revoked, tracked_task_started, tracked_task_succeeded)
from .tokens import api_token_create, api_token_revoke, api_token_user, forget_tokens
from .workers import held_by_live_workers, jobs_reclaim_lapsed, worker_beat, worker_heartbeat, worker_stopped

__all__ = [
    "BulkResult", "JobFilter", "NotFound", "audit_record", "jobs_bulk", "jobs_matching", "operator_groups_ensure",
    "paused_queue_names", "worker_queues_to_leave",
    "queue_pause", "queue_resume", "worker_consumers_reconcile",
    "BrokerUnavailable", "Claim", "IdempotencyConflict", "FailureOutcome", "JobCancelled", "JobContext", "JobInputError", "JobStateError",
    "MissedRuns", "NotPermitted", "QueueFull", "RunOutcome", "SCHEDULED_JOB_TASK", "ScheduleNameTaken",
    "schedule_create", "schedule_dispatched", "schedule_pause", "schedule_resume", "schedule_run_now",
    "schedules_catch_up", "timeline_post", "SubmitResult", "api_token_create", "api_token_revoke", "api_token_user",
    "broker_priority", "delete_expired", "execute_job", "forget_tokens", "full_jitter_backoff", "job_cancel",
    "held_by_live_workers", "job_claim", "job_is_current", "job_progress", "job_republish", "job_retry",
    "job_run_failed", "job_run_lost", "job_submit", "job_submit_scheduled", "job_succeed", "jobs_publish_due",
    "jobs_reclaim_lapsed", "recover_jobs", "is_tracked", "tracked_task_cancelled", "tracked_task_failed", "tracked_task_published",
    "tracked_task_revoked", "tracked_task_started", "tracked_task_succeeded", "validate_params", "worker_beat", "worker_heartbeat", "worker_name", "worker_stopped",
]
