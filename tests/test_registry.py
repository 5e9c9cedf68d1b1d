"""The job-kind decorator refuses options that could never run."""
import pytest
from pydantic import BaseModel

from jobs.registry import job_kind


class NoParams(BaseModel):
    pass


@pytest.mark.parametrize("options, message", [
    ({"queue": "nowhere"}, "not one of JOBS_QUEUES"),
    ({"priority": 10}, "priority must be 0-9"),
    ({"time_limit": 10**6}, "over JOBS_MAX_TIME_LIMIT"),
    ({"soft_time_limit": 20, "time_limit": 10}, "soft_time_limit 20s is over time_limit 10s"),
    ({"max_attempts": 0}, "max_attempts must be at least 1"),
])
def test_impossible_kind_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        job_kind("never_registered", params=NoParams, **options)
