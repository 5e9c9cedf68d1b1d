"""Services: every write and every state transition of a job, and admission. Callers parse, call one, answer."""
from .errors import BrokerUnavailable, IdempotencyConflict, JobInputError, JobStateError, QueueFull
from .recovery import delete_expired, recover_jobs
from .runs import (Claim, FailureOutcome, JobCancelled, JobContext, RunOutcome, execute_job, full_jitter_backoff,
                   job_claim, job_is_current, job_progress, job_run_failed, job_run_lost, job_succeed, worker_name)
from .submit import (SubmitResult, broker_priority, job_cancel, job_republish, job_retry, job_submit,
                     job_submit_scheduled, jobs_publish_due, validate_params)
from .tokens import api_token_create, api_token_revoke, api_token_user, forget_tokens
from .workers import held_by_live_workers, jobs_reclaim_lapsed, worker_beat, worker_heartbeat, worker_stopped

__all__ = [
    "BrokerUnavailable", "Claim", "IdempotencyConflict", "FailureOutcome", "JobCancelled", "JobContext", "JobInputError", "JobStateError",
    "QueueFull", "RunOutcome", "SubmitResult", "api_token_create", "api_token_revoke", "api_token_user",
    "broker_priority", "delete_expired", "execute_job", "forget_tokens", "full_jitter_backoff", "job_cancel",
    "held_by_live_workers", "job_claim", "job_is_current", "job_progress", "job_republish", "job_retry",
    "job_run_failed", "job_run_lost", "job_submit", "job_submit_scheduled", "job_succeed", "jobs_publish_due",
    "jobs_reclaim_lapsed", "recover_jobs", "validate_params", "worker_beat", "worker_heartbeat", "worker_name", "worker_stopped",
]
