"""Fan-out on write: the classic reason for a queue. The author sees the post at once; followers as delivery goes."""
from pydantic import Field

from ..models import Follow, TimelineEntry
from ..registry import job_kind
from .compute import StrictParams


class FanOutParams(StrictParams):
    author_id: int = Field(..., ge=1, le=2**53, description="Who posts.")
    text: str = Field(..., min_length=1, max_length=500, description="The post.")
    ensure_followers: int = Field(
        0, ge=0, le=1_000_000, description="For demos: first give the author at least this many followers."
    )
    batch_size: int = Field(500, ge=1, le=5000, description="Timeline rows written per batch.")


def _post_on_own_timeline(job, params: dict) -> None:
    TimelineEntry.objects.get_or_create(
        reader_id=params["author_id"], post_id=job.id,
        defaults={"author_id": params["author_id"], "text": params["text"]},
    )


@job_kind("fan_out", params=FanOutParams, title="Fan out a post", queue="io", max_attempts=5,
          on_submit=_post_on_own_timeline, soft_time_limit=1800, time_limit=1860)
def fan_out(ctx, params: FanOutParams) -> dict:
    """Write the post into every follower's timeline, in batches (safe to run again: rows are unique)."""
    author = params.author_id
    if params.ensure_followers:
        _ensure_followers(author, params.ensure_followers, params.batch_size)
    followers = Follow.objects.filter(author_id=author).order_by("follower_id").values_list("follower_id", flat=True)
    total = followers.count()
    delivered = 0
    last = 0
    while True:
        batch = list(followers.filter(follower_id__gt=last)[: params.batch_size])
        if not batch:
            break
        TimelineEntry.objects.bulk_create(
            [TimelineEntry(reader_id=f, post_id=ctx.job_id, author_id=author, text=params.text) for f in batch],
            ignore_conflicts=True,
        )
        delivered += len(batch)
        last = batch[-1]
        ctx.progress(delivered, total, f"delivered to {delivered:,} of {total:,} followers")
    return {"post_id": ctx.job_id, "author_id": author, "followers": total, "delivered": delivered}


def _ensure_followers(author: int, count: int, batch_size: int) -> None:
    # Demo followers get ids above the author's, so that they never include the author.
    for start in range(0, count, batch_size):
        Follow.objects.bulk_create(
            [Follow(author_id=author, follower_id=author + 1 + i) for i in range(start, min(count, start + batch_size))],
            ignore_conflicts=True,
        )
