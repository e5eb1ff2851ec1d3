"""Image files' bytes for the tests, drawn with Pillow."""

from __future__ import annotations

import io
import os

from PIL import Image

Colour = tuple[int, int, int] | str


def picture(fmt: str, size: tuple[int, int] = (64, 48), colour: Colour = (200, 30, 30)) -> bytes:
    """A plain ``colour`` picture of ``size`` in ``fmt`` ("JPEG", "PNG", "WEBP", ...)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def jpeg(size: tuple[int, int] = (64, 48), colour: Colour = (10, 20, 30)) -> bytes:
    return picture("JPEG", size, colour)


def png(size: tuple[int, int] = (64, 48), colour: Colour = (200, 30, 30)) -> bytes:
    return picture("PNG", size, colour)


def noise_png(edge: int) -> bytes:
    """An uncompressed PNG of random pixels: ``edge``² × 3 bytes at least, whatever the
    compressor would make of a plain picture."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (edge, edge), os.urandom(edge * edge * 3)).save(
        buffer, "PNG", compress_level=0
    )
    return buffer.getvalue()
