"""The image side of the providers: image bodies, results, sources, queued calls and the
``ImageModel`` interface."""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from .errors import PermanentProviderError
from .provider import Provider

ASPECT_RATIOS = ["1:1", "4:3", "3:4", "16:9", "9:16"]


# Bodies up to this size stay in memory, and larger ones go to a temporary file, so that a
# worker holding 20 results of 5-20 MB does not hold them in RAM.
SPOOL_BYTES = 1024 * 1024


def temporary_directory() -> str | None:
    """Where large bodies spool: Django's FILE_UPLOAD_TEMP_DIR, or else the system's
    default."""
    from django.conf import settings

    return getattr(settings, "FILE_UPLOAD_TEMP_DIR", None) if settings.configured else None


class ImageBody:
    """An image's bytes, counted and SHA-1 hashed as they are written.

    Up to ``spool_bytes`` they stay in memory, and past that they move to an unnamed
    temporary file. ``tempfile.TemporaryFile`` makes no directory entry, so even a killed
    worker leaves nothing behind. ``close()`` frees the file. An in-memory body has nothing
    to free and stays readable, so a caller may still file it again.
    """

    def __init__(self, spool_bytes: int | None = None) -> None:
        self._spool_bytes = SPOOL_BYTES if spool_bytes is None else spool_bytes
        self._memory: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None
        self._sha1 = hashlib.sha1()
        self.size = 0

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageBody:
        body = cls()
        body._memory = io.BytesIO(data)  # It shares ``data`` until written to, with no copy.
        body._sha1.update(data)
        body.size = len(data)
        return body

    def write(self, chunk: bytes) -> int:
        if self.closed:
            raise ValueError("write to a closed image body")
        self._sha1.update(chunk)
        self.size += len(chunk)
        if self._memory is not None:
            self._memory.write(chunk)
            if self.size > self._spool_bytes:
                self._roll_over()
        else:
            self._file.write(chunk)
        return len(chunk)

    def flush(self) -> None:
        """Do nothing. Pillow flushes what it saves into, and there is nothing to flush
        here."""

    def _roll_over(self) -> None:
        file = tempfile.TemporaryFile(dir=temporary_directory())
        try:
            file.write(self._memory.getbuffer())
        except BaseException:
            file.close()
            raise
        self._memory, self._file = None, file

    @property
    def sha1(self) -> str:
        return self._sha1.hexdigest()

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    @property
    def closed(self) -> bool:
        return self._file is not None and self._file.closed

    def open(self) -> IO[bytes]:
        """The body as a readable file, rewound. It is shared, so only one reader may use it
        at a time."""
        if self.closed:
            raise ValueError("the image body is closed")
        stream = self._memory if self._memory is not None else self._file
        stream.seek(0)
        return stream

    def read(self) -> bytes:
        return self.open().read()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class GeneratedImage:
    """A provider's result: the image body, what it is, and where it came from.

    ``data`` may be the bytes themselves or an :class:`ImageBody` that a provider streamed
    into. Whoever files the image closes it, as ``ingest`` does whatever its outcome.
    """

    def __init__(
        self,
        data: bytes | ImageBody,
        content_type: str,
        width: int,
        height: int,
        seed: int | None = None,
        provider_request_id: str = "",
    ) -> None:
        self.body = data if isinstance(data, ImageBody) else ImageBody.from_bytes(data)
        self.content_type = content_type
        self.width = width
        self.height = height
        self.seed = seed
        self.provider_request_id = provider_request_id

    def __repr__(self) -> str:
        return (
            f"<GeneratedImage {self.content_type} {self.width}x{self.height} "
            f"{self.size} bytes{' on disk' if self.on_disk else ''}>"
        )

    @property
    def data(self) -> bytes:
        """The whole body in memory, for small results and tests. Ingest streams the body
        instead."""
        return self.body.read()

    @property
    def size(self) -> int:
        return self.body.size

    @property
    def sha1(self) -> str:
        return self.body.sha1

    @property
    def on_disk(self) -> bool:
        return self.body.on_disk

    @property
    def file(self) -> IO[bytes]:
        """The body as a readable file, rewound."""
        return self.body.open()

    def open(self) -> IO[bytes]:
        return self.body.open()

    @property
    def closed(self) -> bool:
        return self.body.closed

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> GeneratedImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/webp": "webp"}.get(self.content_type, "jpg")


@dataclass(frozen=True)
class SourceImage:
    """An existing image that an editing model derives a new one from, for variations."""

    data: bytes
    content_type: str
    name: str = "source.jpg"

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.data).hexdigest()


@dataclass(frozen=True)
class ProviderCall:
    """A request submitted to an image model's queue. It holds what a later worker needs to
    resume the request (fetch its status, then its result) instead of submitting, and
    paying, again."""

    request_id: str
    endpoint: str


# A stop check is called often while a result is awaited, and returns True when the wait
# should be given up now.
StopCheck = Callable[[], bool]


class ImageModel(Provider):
    """An image model: text to image (``generate``) and, for models that can, image editing
    (``edit``).

    ``can_generate(options)`` and ``can_edit(options)`` say which a configured model does,
    without building it. The request form filters its list of models with them.

    A call has two halves. ``submit`` (or ``submit_edit``) is paid and returns a
    ``ProviderCall``. ``result(call)`` waits for it and returns the image, and any process
    may call it again for the same call (after a timeout, a crash, a deploy) without paying
    again. ``generate`` and ``edit`` are the two halves in one.
    """

    @classmethod
    def can_generate(cls, options: dict) -> bool:
        return True

    @classmethod
    def can_edit(cls, options: dict) -> bool:
        return False

    def submit(
        self, prompt: str, *, aspect_ratio: str = "1:1", seed: int | None = None
    ) -> ProviderCall:
        """Submit a text-to-image request (the paid step), and return it for ``result``."""
        raise NotImplementedError

    def submit_edit(
        self,
        prompt: str,
        source: SourceImage,
        *,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
    ) -> ProviderCall:
        """Submit a request for a new image made from ``source`` as ``prompt`` describes."""
        raise PermanentProviderError(f"{self.name}: this model cannot edit images")

    def result(
        self, call: ProviderCall, *, deadline: float | None = None, stop: StopCheck | None = None
    ) -> GeneratedImage:
        """Wait for a submitted request and return its image, downloaded. The wait lasts
        until ``deadline``, a ``time.monotonic()`` value, or with None for the model's own
        timeout.

        It raises ``RequestGone`` when the provider no longer knows the request (submit it
        again), ``RequestFailed`` when the provider reports the request failed,
        ``HandedBack`` as soon as ``stop()`` says so, and other provider errors as
        ``generate`` does. A transient error leaves the request resumable, so calling
        ``result`` again costs nothing.
        """
        raise NotImplementedError

    def cancel(self, call: ProviderCall) -> None:
        """Ask the provider, as a best effort, to drop a request that will never be
        collected."""

    def generate(
        self, prompt: str, *, aspect_ratio: str = "1:1", seed: int | None = None
    ) -> GeneratedImage:
        image = self.result(self.submit(prompt, aspect_ratio=aspect_ratio, seed=seed))
        if image.seed is None:
            # The model takes no seed, so the one asked for is recorded.
            image.seed = seed
        return image

    def edit(
        self,
        prompt: str,
        source: SourceImage,
        *,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
    ) -> GeneratedImage:
        """A new image made from ``source`` as ``prompt`` describes."""
        call = self.submit_edit(prompt, source, aspect_ratio=aspect_ratio, seed=seed)
        image = self.result(call)
        if image.seed is None:
            image.seed = seed
        return image
