"""Cheap text work, done in the request (`inline=True`) and still recorded as a job."""
import re
from collections import Counter

from pydantic import Field

from ..registry import job_kind
from .compute import StrictParams

WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)


class WordCountParams(StrictParams):
    text: str = Field(..., min_length=1, max_length=100_000, description="The text to count.")
    top: int = Field(10, ge=0, le=100, description="How many of the most frequent words to list.")


@job_kind("word_count", params=WordCountParams, title="Word count", inline=True, max_attempts=1)
def word_count(ctx, params: WordCountParams) -> dict:
    """Count words, lines and characters of a short text, and list its most frequent words."""
    words = [w.lower() for w in WORD.findall(params.text)]
    return {
        "words": len(words),
        "unique_words": len(set(words)),
        "lines": params.text.count("\n") + 1,
        "characters": len(params.text),
        "top_words": [{"word": w, "count": n} for w, n in Counter(words).most_common(params.top)],
    }
