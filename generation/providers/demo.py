"""Offline providers: a deterministic prompt writer and a Pillow image renderer.

They make the whole pipeline runnable without keys, and their knobs (latency, transient
failures, content-policy rejections, concurrency) drive load, chaos and benchmark runs.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
import threading
import time

from PIL import Image, ImageDraw

from .base import LLM, GeneratedImage, ImageModel
from .errors import PermanentProviderError, TransientProviderError

SUBJECTS = [
    "a lone crow", "a lighthouse", "an old tram", "a paper lantern", "a mountain shrine",
    "a fox", "a koi pond", "a market stall", "a bamboo grove", "a rooftop garden",
    "a fishing boat", "a tea house", "a stone bridge", "a snowy torii gate", "a night train",
    "a bicycle", "a cat on a windowsill", "a field of sunflowers", "a glass greenhouse",
    "a harbour crane",
]
STYLES = [
    "watercolour", "ukiyo-e woodblock print", "35mm film photograph", "isometric 3D render",
    "charcoal sketch", "oil painting", "cel-shaded animation still", "linocut", "gouache",
    "cinematic still",
]
LIGHTING = [
    "at golden hour", "under moonlight", "in morning fog", "in neon rain",
    "in soft overcast light", "at blue hour", "in dappled sunlight", "by candlelight",
]
COMPOSITIONS = [
    "wide establishing shot", "close-up", "bird's-eye view", "low angle",
    "symmetrical framing", "rule-of-thirds composition", "silhouette against the sky",
]
SIZES = {"1:1": (512, 512), "4:3": (576, 432), "3:4": (432, 576), "16:9": (640, 360),
         "9:16": (360, 640)}
MAX_CONSECUTIVE_FAILURES = 2  # fewer than the pipeline's 3 retries, so every image lands


def call_key(prompt: str) -> str:
    """The job a call belongs to, as the call log names it (prompts are unique per request)."""
    return hashlib.sha1(prompt.encode()).hexdigest()[:12]


def _fraction(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class DemoLLM(LLM):
    """Combines the theme with subjects, lighting, composition and styles: distinct, readable."""

    batch_size = 500

    def request_prompts(self, theme, count, *, brief, style, avoid):
        pools = [SUBJECTS, LIGHTING, COMPOSITIONS] + ([] if style else [STYLES])
        combos = list(itertools.product(*pools))
        rng = random.Random(f"{theme}|{len(avoid)}")
        prompts = []
        for combo in rng.sample(combos, min(count, len(combos))):
            subject, light, composition, *look = combo
            prompts.append(f"{theme}: {subject} {light}, {composition}, {style or look[0]}")
        return prompts


class DemoImageModel(ImageModel):
    """Renders a distinct picture per prompt. Knobs come from settings.KARASU.

    ``MAX_FAILURE_STREAK`` caps transient failures in a row per prompt and process (0 or
    None: no cap, so FAILURE_RATE 1.0 fails every call). ``CALL_LOG``, a file path, gets a
    ``start``/``end`` line per call, so tests can count calls per job across processes
    (see tests/support/provider_calls.py).
    """

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self.latency = float(options.get("LATENCY", 0))
        self.failure_rate = float(options.get("FAILURE_RATE", 0))
        self.reject_rate = float(options.get("REJECT_RATE", 0))
        streak = options.get("MAX_FAILURE_STREAK", MAX_CONSECUTIVE_FAILURES)
        self.max_failure_streak: int | None = int(streak) if streak else None
        self.call_log = str(options.get("CALL_LOG") or "")
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def would_reject(self, prompt: str) -> bool:
        """Content-policy rejections are a property of the prompt: same prompt, same answer."""
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
        # One os.write of a whole line on an O_APPEND descriptor: appends from several
        # threads and worker processes land whole, never interleaved, and unbuffered.
        line = " ".join(map(str, fields)) + "\n"
        fd = os.open(self.call_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def generate(
        self, prompt: str, *, aspect_ratio: str = "1:1", seed: int | None = None
    ) -> GeneratedImage:
        if not self.call_log:
            return self._generate(prompt, aspect_ratio, seed)
        key, pid, call = call_key(prompt), os.getpid(), os.urandom(4).hex()
        # Logged around the latency too: the interval is the provider's whole in-flight time.
        self._log_call("start", key, pid, f"{time.time():.6f}", call)
        outcome = "error"
        try:
            result = self._generate(prompt, aspect_ratio, seed)
            outcome = "ok"
            return result
        except TransientProviderError:
            outcome = "transient"
            raise
        except PermanentProviderError:
            outcome = "permanent"
            raise
        finally:
            self._log_call("end", key, pid, f"{time.time():.6f}", outcome, call)

    def _generate(self, prompt: str, aspect_ratio: str, seed: int | None) -> GeneratedImage:
        if self.latency:
            time.sleep(self.latency)
        if self.would_reject(prompt):
            raise PermanentProviderError(f"{self.name}: rejected by content policy (simulated)")
        if self._should_fail(prompt):
            raise TransientProviderError(f"{self.name}: simulated transient failure")
        if seed is None:
            seed = int(_fraction("seed", prompt) * 2**31)
        data, (width, height) = render(prompt, aspect_ratio, seed), SIZES[aspect_ratio]
        return GeneratedImage(
            data=data,
            content_type="image/jpeg",
            width=width,
            height=height,
            seed=seed,
            provider_request_id=f"demo-{hashlib.sha1(f'{prompt}{seed}'.encode()).hexdigest()[:12]}",
        )


def render(prompt: str, aspect_ratio: str, seed: int) -> bytes:
    width, height = SIZES[aspect_ratio]
    rng = random.Random(f"{prompt}|{seed}")
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    # A vertical gradient: one 1-pixel column resized is far cheaper than per-pixel work.
    column = Image.new("RGB", (1, 256))
    column.putdata(
        [tuple(top[c] + (bottom[c] - top[c]) * y // 255 for c in range(3)) for y in range(256)]
    )
    image = column.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(4, 9)):
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.randrange(20, max(21, min(width, height) // 3))
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
        else:
            draw.rectangle((x - radius, y - radius // 2, x + radius, y + radius // 2), fill=fill)
    draw.rectangle((0, height - 28, width, height), fill=(0, 0, 0))
    draw.text((8, height - 22), prompt[:90], fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
