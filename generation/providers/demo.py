"""Offline providers: a deterministic prompt writer and a Pillow image renderer.

They make the whole pipeline runnable without keys, and their knobs (latency, transient
failures, content-policy rejections, concurrency, image size and format) drive load, chaos
and benchmark runs.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import random
import threading
import time
import zlib
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured
from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageOps

from .base import LLM, GeneratedImage, ImageBody, ImageModel, PromptBatch, SourceImage
from .errors import PermanentProviderError, TransientProviderError

SUBJECTS = [
    "a lone crow",
    "a lighthouse",
    "an old tram",
    "a paper lantern",
    "a mountain shrine",
    "a fox",
    "a koi pond",
    "a market stall",
    "a bamboo grove",
    "a rooftop garden",
    "a fishing boat",
    "a tea house",
    "a stone bridge",
    "a snowy torii gate",
    "a night train",
    "a bicycle",
    "a cat on a windowsill",
    "a field of sunflowers",
    "a glass greenhouse",
    "a harbour crane",
]
STYLES = [
    "watercolour",
    "ukiyo-e woodblock print",
    "35mm film photograph",
    "isometric 3D render",
    "charcoal sketch",
    "oil painting",
    "cel-shaded animation still",
    "linocut",
    "gouache",
    "cinematic still",
]
LIGHTING = [
    "at golden hour",
    "under moonlight",
    "in morning fog",
    "in neon rain",
    "in soft overcast light",
    "at blue hour",
    "in dappled sunlight",
    "by candlelight",
]
COMPOSITIONS = [
    "wide establishing shot",
    "close-up",
    "bird's-eye view",
    "low angle",
    "symmetrical framing",
    "rule-of-thirds composition",
    "silhouette against the sky",
]
# At the default SIZE (512); other sizes scale every entry by SIZE / 512.
SIZES = {
    "1:1": (512, 512),
    "4:3": (576, 432),
    "3:4": (432, 576),
    "16:9": (640, 360),
    "9:16": (360, 640),
}
DEFAULT_SIZE = 512
MIN_SIZE, MAX_SIZE = 64, 4096  # 4096: Nano Banana Pro's 4K, still under the 40 MP cap
FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png")}
# Photographic detail: +-NOISE_AMPLITUDE levels of per-pixel noise, in bands of NOISE_ROWS
# rows. A band repeats every NOISE_ROWS rows, which is more than deflate's 32 KB window
# looks back, so a PNG cannot compress it away: a 2048x2048 PNG weighs ~7 MB, like a real one.
NOISE_AMPLITUDE = 8
NOISE_ROWS = 64
MAX_CONSECUTIVE_FAILURES = 2  # fewer than the pipeline's 3 retries, so every image lands


def call_key(prompt: str) -> str:
    """The job a call belongs to, as the call log names it (prompts are unique per request)."""
    return hashlib.sha1(prompt.encode()).hexdigest()[:12]


def _fraction(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class DemoLLM(LLM):
    """Combines the theme with subjects, lighting, composition and styles: distinct, readable.

    Each prompt's alt text says literally what it combines (style, subject, light, theme);
    no tokens are used. With a ``source`` (variations of an image), each prompt re-imagines
    that image with one of the subjects added, and names it.
    """

    batch_size = 500

    def request_prompts(
        self,
        theme: str,
        count: int,
        *,
        brief: str,
        style: str,
        avoid: list[str],
        source: str = "",
    ) -> PromptBatch:
        pools = [SUBJECTS, LIGHTING, COMPOSITIONS] + ([] if style else [STYLES])
        combos = list(itertools.product(*pools))
        rng = random.Random(f"{theme}|{source}|{len(avoid)}" if source else f"{theme}|{len(avoid)}")
        original = _short(source)
        items = []
        for combo in rng.sample(combos, min(count, len(combos))):
            subject, light, composition, *look = combo
            medium = style or look[0]
            if source:
                items.append(
                    {
                        "prompt": f"{theme}: {original} re-imagined with {subject} {light}, "
                        f"{composition}, {medium}",
                        "alt_text": f"{medium[:1].upper()}{medium[1:]} variation of {original} "
                        f"with {subject} {light}: {theme}",
                    }
                )
                continue
            items.append(
                {
                    "prompt": f"{theme}: {subject} {light}, {composition}, {medium}",
                    "alt_text": f"{medium[:1].upper()}{medium[1:]} of {subject} {light}: {theme}",
                }
            )
        return PromptBatch(items)


def _short(text: str, limit: int = 60) -> str:
    """A source description short enough to quote in a prompt."""
    text = " ".join(text.split()).split(". Prompt: ")[0]
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


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
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def can_edit(cls, options: dict) -> bool:
        return True  # offline variations: the source recoloured, cropped and captioned

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
        return self._call(prompt, lambda: self._generate(prompt, aspect_ratio, seed))

    def edit(
        self,
        prompt: str,
        source: SourceImage,
        *,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
    ) -> GeneratedImage:
        """Offline editing: the source cropped to the aspect ratio, recoloured and captioned
        with the prompt, so a variation visibly derives from its source."""
        return self._call(prompt, lambda: self._edit(prompt, source, aspect_ratio, seed))

    def _call(self, prompt: str, make) -> GeneratedImage:
        if not self.call_log:
            return make()
        key, pid, call = call_key(prompt), os.getpid(), os.urandom(4).hex()
        # Logged around the latency too: the interval is the provider's whole in-flight time.
        self._log_call("start", key, pid, f"{time.time():.6f}", call)
        outcome = "error"
        try:
            result = make()
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

    def _simulate(self, prompt: str) -> None:
        """The knobs: latency, content-policy rejections and transient failures."""
        if self.latency:
            time.sleep(self.latency)
        if self.would_reject(prompt):
            raise PermanentProviderError(f"{self.name}: rejected by content policy (simulated)")
        if self._should_fail(prompt):
            raise TransientProviderError(f"{self.name}: simulated transient failure")

    def _edit(
        self, prompt: str, source: SourceImage, aspect_ratio: str, seed: int | None
    ) -> GeneratedImage:
        self._simulate(prompt)
        if seed is None:
            seed = int(_fraction("seed", prompt) * 2**31)
        body = ImageBody()
        try:
            width, height = edit_into(
                body,
                source.data,
                prompt,
                aspect_ratio,
                seed,
                size=self.size,
                image_format=self.image_format,
            )
        except BaseException:
            body.close()
            raise
        digest = hashlib.sha1(f"{source.sha1}{prompt}{seed}".encode()).hexdigest()[:12]
        return GeneratedImage(
            body,
            content_type=FORMATS[self.image_format][1],
            width=width,
            height=height,
            seed=seed,
            provider_request_id=f"demo-edit-{digest}",
        )

    def _generate(self, prompt: str, aspect_ratio: str, seed: int | None) -> GeneratedImage:
        self._simulate(prompt)
        if seed is None:
            seed = int(_fraction("seed", prompt) * 2**31)
        # Rendered straight into a body that spills to a temporary file past 1 MB, like a
        # download: a large PNG is never held whole in memory as bytes.
        body = ImageBody()
        try:
            width, height = render_into(
                body, prompt, aspect_ratio, seed, size=self.size, image_format=self.image_format
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
            provider_request_id=f"demo-{hashlib.sha1(f'{prompt}{seed}'.encode()).hexdigest()[:12]}",
        )


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def image_size(aspect_ratio: str, size: int = DEFAULT_SIZE) -> tuple[int, int]:
    """Pixels at SIZE: the 512 table scaled, e.g. 16:9 at 1024 is 1280x720."""
    width, height = SIZES[aspect_ratio]
    return round(width * size / DEFAULT_SIZE), round(height * size / DEFAULT_SIZE)


def render(
    prompt: str,
    aspect_ratio: str,
    seed: int,
    *,
    size: int = DEFAULT_SIZE,
    image_format: str = "jpeg",
) -> bytes:
    """The rendered image as bytes (small images, tests and benchmarks)."""
    buffer = io.BytesIO()
    render_into(buffer, prompt, aspect_ratio, seed, size=size, image_format=image_format)
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def _noise_band(width: int) -> Image.Image:
    """Grey 128 +- NOISE_AMPLITUDE per channel, made once per width and process (and
    deterministic, so the same prompt and seed render the same bytes in every worker)."""
    rng = random.Random(f"noise|{width}")
    noise = Image.frombytes("RGB", (width, NOISE_ROWS), rng.randbytes(width * NOISE_ROWS * 3))
    grey = Image.new("RGB", noise.size, (128, 128, 128))
    return Image.blend(grey, noise, NOISE_AMPLITUDE / 128)


def _add_detail(image: Image.Image) -> None:
    """Add the noise band by band: only one band's copy is ever allocated besides the image."""
    width, height = image.size
    band = _noise_band(width)
    for top in range(0, height, NOISE_ROWS):
        box = (0, top, width, min(height, top + NOISE_ROWS))
        strip = image.crop(box)
        noise = band if strip.size == band.size else band.crop((0, 0, *strip.size))
        image.paste(ImageChops.add(strip, noise, scale=1.0, offset=-128), box)


@functools.cache
def _caption_font() -> ImageFont.ImageFont:
    # Pillow's bitmap font: a caption in 0.02 ms, where FreeType's default takes 0.5 ms.
    return ImageFont.load_default_imagefont()


# Typographic punctuation that the bitmap font lacks, spelled the ASCII way.
_PLAIN_PUNCTUATION = str.maketrans(
    {
        "\u2013": "-",
        "\u2014": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2026": "...",
    }
)


def drawable_caption(text: str, limit: int = 90) -> str:
    """``text`` as the bitmap font can draw it. The font encodes only Latin-1, so anything
    else (CJK, Arabic, emoji) is left out rather than failing the image."""
    text = text.translate(_PLAIN_PUNCTUATION).encode("latin-1", "ignore").decode("latin-1")
    return " ".join(text.split())[:limit]


def render_into(
    out: Writable,
    prompt: str,
    aspect_ratio: str,
    seed: int,
    *,
    size: int = DEFAULT_SIZE,
    image_format: str = "jpeg",
) -> tuple[int, int]:
    """Render and encode the image into ``out`` chunk by chunk; return (width, height)."""
    width, height = image_size(aspect_ratio, size)
    scale = size / DEFAULT_SIZE
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
    _caption(draw, prompt, width, height, scale)
    # Provider-sized output gets provider-like detail, so files weigh what real results
    # weigh; the default stays the cheap ~15 KB picture the other benchmarks measure with.
    if size > DEFAULT_SIZE or image_format == "png":
        _add_detail(image)
    _encode(image, out, image_format)
    return width, height


def _caption(draw: ImageDraw.ImageDraw, prompt: str, width: int, height: int, scale: float) -> None:
    draw.rectangle((0, height - round(28 * scale), width, height), fill=(0, 0, 0))
    draw.text(
        (round(8 * scale), height - round(22 * scale)),
        drawable_caption(prompt),
        fill=(255, 255, 255),
        font=_caption_font(),
    )


def _encode(image: Image.Image, out: Writable, image_format: str) -> None:
    if image_format == "png":
        # Z_RLE: the noise is incompressible anyway, and it encodes ~3x faster than the
        # default strategy for the same size.
        image.save(out, "PNG", compress_level=6, compress_type=zlib.Z_RLE)
    elif image_format == "jpeg":
        image.save(out, "JPEG", quality=85)
    else:
        raise ValueError(f"unknown demo image format {image_format!r}")


def edit_into(
    out: Writable,
    source: bytes,
    prompt: str,
    aspect_ratio: str,
    seed: int,
    *,
    size: int = DEFAULT_SIZE,
    image_format: str = "jpeg",
) -> tuple[int, int]:
    """The demo "edit": the source cropped to ``aspect_ratio`` (a seed-chosen window of at
    least 80% of it), tinted towards a seed colour and captioned with the prompt."""
    width, height = image_size(aspect_ratio, size)
    rng = random.Random(f"edit|{prompt}|{seed}")
    try:
        with Image.open(io.BytesIO(source)) as opened:
            opened.draft("RGB", (width * 2, height * 2))  # JPEGs decode at a reduced size
            picture = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PermanentProviderError(f"demo: the source image cannot be read: {exc}") from None
    zoom = rng.uniform(0.8, 1.0)
    window = ImageOps.fit(
        picture,
        (max(1, round(width / zoom)), max(1, round(height / zoom))),
        Image.Resampling.BILINEAR,
        centering=(rng.random(), rng.random()),
    )
    image = ImageOps.fit(
        window, (width, height), Image.Resampling.BILINEAR, centering=(rng.random(), rng.random())
    )
    tint = Image.new("RGB", image.size, tuple(rng.randrange(256) for _ in range(3)))
    image = Image.blend(image, tint, 0.35)
    _caption(ImageDraw.Draw(image), prompt, width, height, size / DEFAULT_SIZE)
    _encode(image, out, image_format)
    return width, height
