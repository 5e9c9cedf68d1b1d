"""Posting to a timeline: a fan-out job whose author is an existing user (the post is on the author's own timeline
at once, and reaches each follower's as the job delivers it)."""
from __future__ import annotations

from django.contrib.auth import get_user_model

from ..models import Job
from .errors import JobInputError, NotPermitted
from .submit import job_submit

FAN_OUT_KIND = "fan_out"


def timeline_post(*, user, author_id: int, text: str, ensure_followers: int = 0,
                  batch_size: int | None = None) -> Job:
    """Post `text` as the user `author_id` (yourself; staff may post as any active user).

    Raises NotPermitted, JobInputError (no such active user, or parameters the kind refuses), or QueueFull /
    BrokerUnavailable as any submission does; nothing is written then.
    """
    if author_id != user.pk and not user.is_staff:
        raise NotPermitted("you may post as yourself only")
    if not get_user_model().objects.filter(pk=author_id, is_active=True).exists():
        raise JobInputError([{"loc": ["params", "author_id"], "msg": "no active user has this id", "type": "user"}])
    params = {"author_id": author_id, "text": text, "ensure_followers": ensure_followers}
    if batch_size is not None:
        params["batch_size"] = batch_size
    return job_submit(user=user, kind=FAN_OUT_KIND, params=params).job
