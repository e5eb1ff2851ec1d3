"""The two kinds of provider failure the pipeline distinguishes, with safe one-line reasons."""

from __future__ import annotations

import logging
import os
import re

from django.conf import settings

# Known key shapes, in case a provider echoes a key we were not configured with.
_KEY_PATTERNS = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|(?:key|Key)\s+[A-Za-z0-9:_\-]{16,})")
SECRET_SETTINGS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "FAL_KEY", "KARASU_METRICS_TOKEN")
# Secrets that are never settings: boto3 reads the media bucket's credentials (MEDIA_S3_*)
# from the environment itself. Shorter values are not secrets worth blanking text for.
SECRET_ENVIRONMENT = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_S3_SECRET_ACCESS_KEY",
)
MIN_ENVIRONMENT_SECRET = 8
MAX_REASON = 300


def redact_secrets(text: str) -> str:
    """Replace every configured secret and anything shaped like a key; the rest is kept."""
    for name in SECRET_SETTINGS:
        secret = getattr(settings, name, "")
        if secret:
            text = text.replace(secret, "[redacted]")
    for name in SECRET_ENVIRONMENT:
        secret = os.environ.get(name, "")
        if len(secret) >= MIN_ENVIRONMENT_SECRET:
            text = text.replace(secret, "[redacted]")
    return _KEY_PATTERNS.sub("[redacted]", text)


def redact_traceback(text: str, lines: int = 60, width: int = 500) -> str:
    """A traceback's last ``lines`` lines, redacted whole and then cut to ``width``: its
    indentation is kept, and no cut can split a secret."""
    return "\n".join(line[:width] for line in redact_secrets(text).splitlines()[-lines:])


def redact(text: str) -> str:
    """Strip every configured secret and anything shaped like a key; one short line."""
    text = " ".join(redact_secrets(text).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


class ProviderError(Exception):
    # An LLM's TokenUsage for calls that were answered (and paid for) before this error.
    usage = None

    def __init__(self, reason: str):
        self.reason = redact(reason)
        super().__init__(self.reason)


class TransientProviderError(ProviderError):
    """Worth retrying: rate limits, timeouts, overload, 5xx, connection trouble.

    ``rate_limited``: the provider said too many requests (HTTP 429), as counted in the
    metrics' provider errors.
    """

    def __init__(self, reason: str, retry_after: float | None = None, rate_limited: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class PermanentProviderError(ProviderError):
    """Retrying cannot help: bad request, auth, content policy, invalid output, unsafe URL."""


class NotCalled(PermanentProviderError):
    """Refused before any call to the provider (an unknown model, a deleted source image):
    a failure of the job, not an error of the provider."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form); None if absent or a date."""
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


class RedactSecretsFilter(logging.Filter):
    """Rewrite a log record so no configured key or key-shaped string reaches a handler.

    Unlike ``redact()`` it keeps line breaks and length: tracebacks stay readable.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw template, lose the args
            message = str(record.msg)
        try:
            record.msg = redact_secrets(message)
            record.args = None
            if record.exc_info and not record.exc_text:
                # Formatters reuse a cached exc_text, so filling it here is what they print.
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact_secrets(record.exc_text)
            if record.stack_info:
                record.stack_info = redact_secrets(record.stack_info)
        except Exception:  # settings unreadable: drop the record rather than risk a leak
            return False
        return True
