"""The demo's pictures, drawn with Pillow: a distinct image per prompt and seed, and the
offline "edit" of a source image.

Large sizes and PNG get photographic noise, so that the files weigh what real results weigh.
"""

from __future__ import annotations

import functools
import io
import random
import zlib
from typing import Protocol

from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageOps

from .errors import PermanentProviderError

# The sizes at the default SIZE (512). Other sizes scale every entry by SIZE / 512.
SIZES = {
    "1:1": (512, 512),
    "4:3": (576, 432),
    "3:4": (432, 576),
    "16:9": (640, 360),
    "9:16": (360, 640),
}
DEFAULT_SIZE = 512
# Photographic detail is +-NOISE_AMPLITUDE levels of per-pixel noise, in bands of NOISE_ROWS
# rows. A band repeats every NOISE_ROWS rows, which is further than deflate's 32 KB window
# looks back, so a PNG cannot compress it away. A 2048x2048 PNG then weighs about 7 MB, like
# a real one.
NOISE_AMPLITUDE = 8
NOISE_ROWS = 64


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def image_size(aspect_ratio: str, size: int = DEFAULT_SIZE) -> tuple[int, int]:
    """The pixels at SIZE, which scale the 512 table. For example, 16:9 at 1024 is
    1280x720."""
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
    """The rendered image as bytes, for small images, tests and benchmarks."""
    buffer = io.BytesIO()
    render_into(buffer, prompt, aspect_ratio, seed, size=size, image_format=image_format)
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def _noise_band(width: int) -> Image.Image:
    """Grey 128 +- NOISE_AMPLITUDE per channel, made once per width and process. It is
    deterministic, so that the same prompt and seed render the same bytes in every
    worker."""
    rng = random.Random(f"noise|{width}")
    noise = Image.frombytes("RGB", (width, NOISE_ROWS), rng.randbytes(width * NOISE_ROWS * 3))
    grey = Image.new("RGB", noise.size, (128, 128, 128))
    return Image.blend(grey, noise, NOISE_AMPLITUDE / 128)


def _add_detail(image: Image.Image) -> None:
    """Add the noise band by band, so that only one band's copy is ever allocated besides
    the image."""
    width, height = image.size
    band = _noise_band(width)
    for top in range(0, height, NOISE_ROWS):
        box = (0, top, width, min(height, top + NOISE_ROWS))
        strip = image.crop(box)
        noise = band if strip.size == band.size else band.crop((0, 0, *strip.size))
        image.paste(ImageChops.add(strip, noise, scale=1.0, offset=-128), box)


@functools.cache
def _caption_font() -> ImageFont.ImageFont:
    # Pillow's bitmap font draws a caption in 0.02 ms, where FreeType's default takes 0.5 ms.
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
    """Render and encode the image into ``out`` chunk by chunk, and return (width,
    height)."""
    width, height = image_size(aspect_ratio, size)
    scale = size / DEFAULT_SIZE
    rng = random.Random(f"{prompt}|{seed}")
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    # A vertical gradient is one 1-pixel column resized, which is far cheaper than
    # per-pixel work.
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
    # Provider-sized output gets provider-like detail, so that files weigh what real results
    # weigh. The default stays the cheap ~15 KB picture that the other benchmarks measure
    # with.
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
        # Z_RLE suits noise that is incompressible anyway, and it encodes about 3x faster
        # than the default strategy for the same size.
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
    """The demo "edit". The source is cropped to ``aspect_ratio`` (a seed-chosen window of
    at least 80% of it), tinted towards a seed colour and captioned with the prompt."""
    width, height = image_size(aspect_ratio, size)
    rng = random.Random(f"edit|{prompt}|{seed}")
    try:
        with Image.open(io.BytesIO(source)) as opened:
            opened.draft("RGB", (width * 2, height * 2))  # JPEGs decode at a reduced size.
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
