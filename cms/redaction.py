"""Redaction: no secret reaches a log line, a job's error, the ledger or the monitor.

Provider keys are settings; the media bucket's credentials are read by boto3 from the
environment. Both are blanked, and so is anything shaped like a key, in case a provider
echoes one it was not configured with.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path

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


@functools.lru_cache(maxsize=4)
def _read_key_file(path: str, mtime_ns: int, size: int) -> str:
    """A key file's text, read again only when the file changes (mtime and size are the
    cache's key)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _c2pa_key_lines() -> list[str]:
    """The lines of the C2PA private key as it is loaded (inline, with real line breaks,
    or from its _FILE), longest first. A key is redacted line by line because it reaches
    text in more than one shape: whole, as repr() of its bytes (a backslash and an n between
    the lines), or as the environment gave it."""
    config = (getattr(settings, "KARASU", None) or {}).get("C2PA") or {}
    keys = []
    inline = config.get("PRIVATE_KEY") or ""
    keys.append(inline.decode(errors="replace") if isinstance(inline, bytes) else inline)
    path = config.get("PRIVATE_KEY_FILE") or ""
    if path:
        try:
            stat = os.stat(path)
        except OSError:
            pass
        else:
            keys.append(_read_key_file(path, stat.st_mtime_ns, stat.st_size))
    lines = {
        line.strip()
        for key in keys
        # The environment's form: a literal \n stands for a line break.
        for line in key.replace("\\n", "\n").splitlines()
        if len(line.strip()) >= MIN_ENVIRONMENT_SECRET and not line.strip().startswith("-----")
    }
    return sorted(lines, key=len, reverse=True)


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
    for line in _c2pa_key_lines():
        text = text.replace(line, "[redacted]")
    return _KEY_PATTERNS.sub("[redacted]", text)


def redact_traceback(text: str, lines: int = 60, width: int = 500) -> str:
    """A traceback's last ``lines`` lines, redacted whole and then cut to ``width``, so its
    indentation is kept and no cut can split a secret."""
    return "\n".join(line[:width] for line in redact_secrets(text).splitlines()[-lines:])


def redact(text: str) -> str:
    """Strip every configured secret and anything shaped like a key, into one short line."""
    text = " ".join(redact_secrets(text).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


class RedactSecretsFilter(logging.Filter):
    """Rewrite a log record so no configured key or key-shaped string reaches a handler.

    Unlike ``redact()`` it keeps line breaks and length, so tracebacks stay readable.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string, so keep the raw template without args
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
        except Exception:  # settings unreadable, so drop the record rather than leak
            return False
        return True
