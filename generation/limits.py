"""The limits that the pipeline's provider calls run under, shared by every worker.

Each LLM and each image model has a concurrency limiter (its ``CONCURRENCY`` slots in the
queue storage) and may have a requests-per-minute window. They are built once per process
and cached, because a limiter remembers the slots its threads hold.
"""

from __future__ import annotations

import functools

from huey.contrib.djhuey import HUEY

from generation.providers import ImageModel, get_image_model
from huey_tasks.limiter import ConcurrencyLimiter, RequestsPerMinute


@functools.cache
def llm_limiter_for(llm_name: str, limit: int) -> ConcurrencyLimiter:
    return ConcurrencyLimiter(HUEY, f"llm:{llm_name}", limit)


@functools.cache
def limiter_for(model_name: str) -> ConcurrencyLimiter:
    model = get_image_model(model_name)
    return ConcurrencyLimiter(HUEY, f"image:{model_name}", model.concurrency)


def rate_limit_for(model: ImageModel) -> RequestsPerMinute | None:
    """The model's requests-per-minute limit, if it has one (shared by every worker)."""
    if model.requests_per_minute:
        return requests_per_minute(model.name, model.requests_per_minute)
    return None


@functools.cache
def requests_per_minute(model_name: str, limit: int) -> RequestsPerMinute:
    # There is one per model and limit. It remembers its last window, to clean up after a
    # lull, and a changed REQUESTS_PER_MINUTE gets a fresh one.
    return RequestsPerMinute(HUEY, f"image:{model_name}", limit, period=60)
