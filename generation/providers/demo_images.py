"""The offline image model, which behaves like fal's queue and renders with ``demo_render``.

Its knobs (latency, transient failures, content-policy rejections, image size and format)
drive load, chaos and benchmark runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import threading
import time
import uuid
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from .demo_render import DEFAULT_SIZE, edit_into, render_into
from .errors import (
    HandedBack,
    PermanentProviderError,
    RequestFailed,
    RequestGone,
    TransientProviderError,
)
from .images import GeneratedImage, ImageBody, ImageModel, ProviderCall, SourceImage

# 4096 is Nano Banana Pro's 4K, which is still under the 40 MP cap.
MIN_SIZE, MAX_SIZE = 64, 4096
FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png")}
# Fewer than the pipeline's 3 retries, so that every image lands.
MAX_CONSECUTIVE_FAILURES = 2
# The demo queue keeps a result this long after it is ready (fal keeps one about an hour).
# Waits look at the clock, and at a stopping worker, this often. Every PURGE_EVERY-th
# submission of a process forgets the expired requests.
EXPIRES_AFTER = 3600.0
WAIT_STEP = 0.05
PURGE_EVERY = 200
REQUEST_ID = re.compile(r"demo-(edit-)?[0-9a-f]{32}")


def call_key(prompt: str) -> str:
    """The job that a call belongs to, as the call log names it. Prompts are unique per
    request."""
    return hashlib.sha1(prompt.encode()).hexdigest()[:12]


def _fraction(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class DemoImageModel(ImageModel):
    """Renders a distinct picture per prompt. Its knobs come from settings.KARASU.

    It behaves like fal's queue. ``submit`` records the request in ``STATE_DIR``, provider
    state that every process on the host shares and that outlives the worker that
    submitted. The result is ready LATENCY seconds after submission, whoever asks for it,
    and an unknown or expired request is gone (``RequestGone``). Transient failures and
    content-policy rejections are decided at submission, like a provider's outcome.

    ``MAX_FAILURE_STREAK`` caps the transient failures in a row per prompt and process (0
    or None means no cap, so FAILURE_RATE 1.0 fails every call). ``CALL_LOG``, a file path,
    gets a ``start`` line per submission (a paid call), a ``resume`` line when a submitted
    request is waited for again, and an ``end`` line when its outcome is delivered, so that
    tests can count paid submissions per job across processes (see
    tests/support/provider_calls.py).
    """

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self.latency = float(options.get("LATENCY", 0))
        self.failure_rate = float(options.get("FAILURE_RATE", 0))
        self.reject_rate = float(options.get("REJECT_RATE", 0))
        streak = options.get("MAX_FAILURE_STREAK", MAX_CONSECUTIVE_FAILURES)
        self.max_failure_streak: int | None = int(streak) if streak else None
        self.call_log = str(options.get("CALL_LOG") or "")
        self.size = int(options.get("SIZE") or DEFAULT_SIZE)
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ImproperlyConfigured(
                f"{name}: SIZE must be {MIN_SIZE}-{MAX_SIZE} pixels, not {self.size}"
            )
        self.image_format = str(options.get("FORMAT") or "jpeg").lower()
        if self.image_format not in FORMATS:
            raise ImproperlyConfigured(
                f"{name}: FORMAT must be one of {', '.join(FORMATS)}, not {self.image_format!r}"
            )
        self.state_dir = Path(options.get("STATE_DIR") or default_state_dir())
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._failures: dict[str, int] = {}
        self._fresh: set[str] = set()  # Submitted here and not yet waited for.
        self._submissions = 0
        self._lock = threading.Lock()

    @classmethod
    def can_edit(cls, options: dict) -> bool:
        # Offline variations recolour, crop and caption the source.
        return True

    def would_reject(self, prompt: str) -> bool:
        """Whether the prompt is rejected as if by a content policy. This is a property of
        the prompt, so the same prompt always gets the same answer."""
        return _fraction("reject", prompt) < self.reject_rate

    def _should_fail(self, prompt: str) -> bool:
        with self._lock:
            streak = self._failures.get(prompt, 0)
            capped = self.max_failure_streak is not None and streak >= self.max_failure_streak
            if not capped and random.random() < self.failure_rate:
                self._failures[prompt] = streak + 1
                return True
            self._failures.pop(prompt, None)
            return False

    def _log_call(self, *fields: object) -> None:
        if not self.call_log:
            return
        # A whole line goes in one os.write on an O_APPEND descriptor, so that appends from
        # several threads and worker processes land whole, never interleaved, and
        # unbuffered.
        line = " ".join(map(str, fields)) + "\n"
        fd = os.open(self.call_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    # The queue: submit, then result from any process ---------------------------------
    def submit(
        self, prompt: str, *, aspect_ratio: str = "1:1", seed: int | None = None
    ) -> ProviderCall:
        return self._submit("generate", prompt, aspect_ratio, seed, None)

    def submit_edit(
        self,
        prompt: str,
        source: SourceImage,
        *,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
    ) -> ProviderCall:
        """Edit offline: the source is cropped to the aspect ratio, recoloured and captioned
        with the prompt, so that a variation visibly derives from its source."""
        return self._submit("edit", prompt, aspect_ratio, seed, source)

    def _submit(
        self,
        kind: str,
        prompt: str,
        aspect_ratio: str,
        seed: int | None,
        source: SourceImage | None,
    ) -> ProviderCall:
        if seed is None:
            seed = int(_fraction("seed", prompt) * 2**31)
        if self.would_reject(prompt):
            outcome = "permanent"
        elif self._should_fail(prompt):
            outcome = "transient"
        else:
            outcome = "ok"
        request_id = f"demo-{'edit-' if kind == 'edit' else ''}{uuid.uuid4().hex}"
        now = time.time()
        if source is not None:
            _write_atomically(self.state_dir / f"{request_id}.source", source.data)
        record = {
            "kind": kind,
            "prompt": prompt,
            "aspect_ratio": aspect_ratio,
            "seed": seed,
            "submitted_at": now,
            "ready_at": now + self.latency,
            "outcome": outcome,
        }
        # The request is recorded before it is answered, so that once submit() returns,
        # any process can resume it.
        _write_atomically(self.state_dir / f"{request_id}.json", json.dumps(record).encode())
        self._log_call("start", call_key(prompt), os.getpid(), f"{now:.6f}", request_id)
        with self._lock:
            self._fresh.add(request_id)
            self._submissions += 1
            purge = self._submissions % PURGE_EVERY == 1
        if purge:
            self._purge_expired()
        return ProviderCall(request_id, self.name)

    def result(
        self, call: ProviderCall, *, deadline: float | None = None, stop=None
    ) -> GeneratedImage:
        record = self._record(call.request_id)
        key = call_key(record["prompt"])
        with self._lock:
            fresh = call.request_id in self._fresh
            self._fresh.discard(call.request_id)
        if not fresh:
            self._log_call("resume", key, os.getpid(), f"{time.time():.6f}", call.request_id)
        # The wait is taken in short steps, so that a stopping worker hands it back at once.
        while (remaining := record["ready_at"] - time.time()) > 0:
            if stop is not None and stop():
                raise HandedBack(f"{self.name}: request {call.request_id} handed back")
            if deadline is not None and time.monotonic() >= deadline:
                raise TransientProviderError(
                    f"{self.name}: no result yet (request {call.request_id} kept)"
                )
            time.sleep(min(remaining, WAIT_STEP))
        outcome = "error"
        try:
            if record["outcome"] == "permanent":
                outcome = "permanent"
                raise PermanentProviderError(f"{self.name}: rejected by content policy (simulated)")
            if record["outcome"] == "transient":
                outcome = "transient"
                raise RequestFailed(f"{self.name}: simulated transient failure")
            image = self._render(call.request_id, record)
            outcome = "ok"
            return image
        finally:
            self._log_call("end", key, os.getpid(), f"{time.time():.6f}", outcome, call.request_id)

    def cancel(self, call: ProviderCall) -> None:
        # The demo's work is already done by the time anyone cancels, so forgetting the
        # request is what a provider's cancel amounts to here.
        for suffix in (".json", ".source"):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / f"{call.request_id}{suffix}").unlink()

    def _record(self, request_id: str) -> dict:
        if not REQUEST_ID.fullmatch(request_id):
            raise RequestGone(f"{self.name}: unknown request {request_id[:40]!r}")
        try:
            record = json.loads((self.state_dir / f"{request_id}.json").read_bytes())
        except FileNotFoundError:
            gone = f"{self.name}: request {request_id} is unknown or expired"
            raise RequestGone(gone) from None
        if time.time() > record["ready_at"] + EXPIRES_AFTER:
            raise RequestGone(f"{self.name}: request {request_id} expired")
        return record

    def _purge_expired(self) -> None:
        """Forget the requests whose results expired, as fal does after about an hour."""
        cutoff = time.time() - EXPIRES_AFTER - self.latency
        for path in self.state_dir.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def _render(self, request_id: str, record: dict) -> GeneratedImage:
        prompt, aspect_ratio, seed = record["prompt"], record["aspect_ratio"], record["seed"]
        # The image is rendered straight into a body that spills to a temporary file past
        # 1 MB, like a download, so a large PNG is never held whole in memory as bytes.
        body = ImageBody()
        try:
            if record["kind"] == "edit":
                try:
                    source = (self.state_dir / f"{request_id}.source").read_bytes()
                except FileNotFoundError:
                    raise RequestGone(f"{self.name}: request {request_id} expired") from None
                width, height = edit_into(
                    body,
                    source,
                    prompt,
                    aspect_ratio,
                    seed,
                    size=self.size,
                    image_format=self.image_format,
                )
            else:
                width, height = render_into(
                    body,
                    prompt,
                    aspect_ratio,
                    seed,
                    size=self.size,
                    image_format=self.image_format,
                )
        except BaseException:
            body.close()
            raise
        return GeneratedImage(
            body,
            content_type=FORMATS[self.image_format][1],
            width=width,
            height=height,
            seed=seed,
            provider_request_id=request_id,
        )


def default_state_dir() -> Path:
    """Where the demo provider keeps its submitted requests, which is
    KARASU_DATA_DIR/demo-provider."""
    from django.conf import settings

    return Path(settings.DATA_DIR) / "demo-provider"


def _write_atomically(path: Path, data: bytes) -> None:
    # The file is written aside and renamed, so that a reader (or a process killed
    # mid-write) never sees half of it.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_bytes(data)
    os.replace(temporary, path)
