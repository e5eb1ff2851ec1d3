"""The two kinds of provider failure the pipeline distinguishes, with safe one-line reasons."""

from __future__ import annotations

from cms.redaction import redact


class ProviderError(Exception):
    # An LLM's TokenUsage for calls that were answered (and paid for) before this error.
    usage = None

    def __init__(self, reason: str):
        self.reason = redact(reason)
        super().__init__(self.reason)


class TransientProviderError(ProviderError):
    """A failure worth retrying: a rate limit, a timeout, overload, a 5xx answer or
    connection trouble.

    ``rate_limited`` is True when the provider said there were too many requests (HTTP
    429), which the metrics count among the provider errors.
    """

    def __init__(self, reason: str, retry_after: float | None = None, rate_limited: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class PermanentProviderError(ProviderError):
    """A failure that retrying cannot help: a bad request, authentication, the content
    policy, invalid output or an unsafe URL."""


class RequestGone(TransientProviderError):
    """The provider no longer knows a submitted request (it is unknown or expired, HTTP
    404 on resume). Nothing of it can be fetched, so it is submitted again at once."""


class RequestFailed(TransientProviderError):
    """The provider reports that a submitted request failed, for a reason other than the
    content policy. It is not resumed again, and the next attempt submits anew (fal bills
    no failed output)."""


class HandedBack(Exception):
    """The worker is stopping (SIGTERM), so its wait for a submitted request was given up
    within the grace, without cancelling the request, and the next worker resumes it. This
    is neither a provider error nor an attempt. ``in_flight`` is False when no request was
    submitted."""

    def __init__(self, reason: str, in_flight: bool = True):
        super().__init__(reason)
        self.in_flight = in_flight


class NotCalled(PermanentProviderError):
    """A job refused before any call to the provider (an unknown model, a deleted source
    image). It is a failure of the job, not an error of the provider."""


def parse_retry_after(value: str | None) -> float | None:
    """The seconds of a Retry-After header in its delta-seconds form, or None if it is
    absent or a date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


TRANSIENT_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504, 529}
RATE_LIMITED_STATUS = 429


def error_for_status(provider: str, status: int, detail: str, retry_after: str | None = None):
    """Map an HTTP status to the right provider error."""
    reason = f"{provider}: HTTP {status}: {detail}"
    if status in TRANSIENT_STATUSES or status >= 500:
        return TransientProviderError(
            reason,
            retry_after=parse_retry_after(retry_after),
            rate_limited=status == RATE_LIMITED_STATUS,
        )
    return PermanentProviderError(reason)
