"""FLUX, Nano Banana and Nano Banana Pro on fal.ai through the official fal-client, via its
queue API; and the editing endpoints (Nano Banana edit, FLUX.1 Kontext [pro]) for variations
of a library image, whose source goes up through fal-client's upload to fal's CDN (so the
site itself need not be reachable from fal)."""

from __future__ import annotations

import contextlib
import threading
import time

import fal_client
import fal_client.client
import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .base import GeneratedImage, ImageModel, SourceImage
from .download import download_image
from .errors import PermanentProviderError, TransientProviderError, error_for_status

# FLUX endpoints name sizes; the others take an aspect ratio.
FLUX_IMAGE_SIZES = {
    "1:1": "square_hd",
    "4:3": "landscape_4_3",
    "3:4": "portrait_4_3",
    "16:9": "landscape_16_9",
    "9:16": "portrait_16_9",
}
CONTENT_POLICY_TYPES = {"content_policy_violation", "content_policy", "nsfw"}
# Nano Banana Pro's output sizes (the long edge is about 1024, 2048 or 4096 pixels); fal
# charges 4K at twice the 1K/2K price.
NANO_BANANA_PRO_RESOLUTIONS = ("1K", "2K", "4K")


def flux_arguments(prompt, aspect_ratio, seed, options):
    arguments = {
        "prompt": prompt,
        "image_size": FLUX_IMAGE_SIZES[aspect_ratio],
        "num_images": 1,
        "output_format": options.get("OUTPUT_FORMAT", "jpeg"),
        "enable_safety_checker": True,
    }
    if seed is not None:
        arguments["seed"] = seed
    return arguments


def flux_pro_arguments(prompt, aspect_ratio, seed, options):
    arguments = flux_arguments(prompt, aspect_ratio, seed, options)
    arguments["safety_tolerance"] = str(options.get("SAFETY_TOLERANCE", 2))
    return arguments


def flux_ultra_arguments(prompt, aspect_ratio, seed, options):
    arguments = {
        "prompt": prompt,
        "aspect_ratio": aspect_ratio,
        "num_images": 1,
        "output_format": options.get("OUTPUT_FORMAT", "jpeg"),
        "enable_safety_checker": True,
        "safety_tolerance": str(options.get("SAFETY_TOLERANCE", 2)),
    }
    if seed is not None:
        arguments["seed"] = seed
    return arguments


def nano_banana_arguments(prompt, aspect_ratio, seed, options):
    # Nano Banana takes no seed.
    return {
        "prompt": prompt,
        "aspect_ratio": aspect_ratio,
        "num_images": 1,
        "output_format": options.get("OUTPUT_FORMAT", "png"),
    }


def nano_banana_pro_resolution(options, name: str = "nano-banana-pro") -> str:
    """The configured RESOLUTION (default 1K), checked: fal would refuse anything else."""
    resolution = str(options.get("RESOLUTION") or "1K").strip().upper()
    if resolution not in NANO_BANANA_PRO_RESOLUTIONS:
        raise ImproperlyConfigured(
            f"{name}: RESOLUTION must be one of {', '.join(NANO_BANANA_PRO_RESOLUTIONS)}, "
            f"not {options.get('RESOLUTION')!r}"
        )
    return resolution


def nano_banana_pro_arguments(prompt, aspect_ratio, seed, options):
    # Nano Banana's arguments; the Pro endpoint's schema also takes a resolution and a seed.
    arguments = nano_banana_arguments(prompt, aspect_ratio, seed, options)
    arguments["resolution"] = nano_banana_pro_resolution(options)
    if seed is not None:
        arguments["seed"] = seed
    return arguments


ARGUMENT_BUILDERS = {
    "flux": flux_arguments,
    "flux-pro": flux_pro_arguments,
    "flux-ultra": flux_ultra_arguments,
    "nano-banana": nano_banana_arguments,
    "nano-banana-pro": nano_banana_pro_arguments,
}


# Editing endpoints: the prompt is an instruction for the uploaded source image.
def nano_banana_edit_arguments(prompt, image_url, aspect_ratio, seed, options):
    # fal-ai/nano-banana/edit: image_urls (a list, required), aspect_ratio ("auto" or a ratio),
    # and, unlike the text-to-image endpoint, an optional seed.
    arguments = {
        "prompt": prompt,
        "image_urls": [image_url],
        "aspect_ratio": aspect_ratio,
        "num_images": 1,
        "output_format": options.get("OUTPUT_FORMAT", "png"),
    }
    if seed is not None:
        arguments["seed"] = seed
    return arguments


def flux_kontext_arguments(prompt, image_url, aspect_ratio, seed, options):
    # fal-ai/flux-pro/kontext: one image_url (required), FLUX's safety tolerance as a string.
    arguments = {
        "prompt": prompt,
        "image_url": image_url,
        "aspect_ratio": aspect_ratio,
        "num_images": 1,
        "output_format": options.get("OUTPUT_FORMAT", "jpeg"),
        "safety_tolerance": str(options.get("SAFETY_TOLERANCE", 2)),
    }
    if seed is not None:
        arguments["seed"] = seed
    return arguments


EDIT_ARGUMENT_BUILDERS = {
    "nano-banana-edit": nano_banana_edit_arguments,
    "flux-kontext": flux_kontext_arguments,
}
# An uploaded source is reused by the request's other jobs for this long (seconds); fal
# keeps it for a day (UPLOAD_EXPIRES), so a reused URL is always still there.
UPLOAD_REUSE_SECONDS = 6 * 3600
UPLOAD_EXPIRES = "1d"


class FalImageModel(ImageModel):
    """One fal endpoint: text to image (ARGUMENTS in ARGUMENT_BUILDERS) or image editing
    (ARGUMENTS in EDIT_ARGUMENT_BUILDERS)."""

    requires_setting = "FAL_KEY"

    @classmethod
    def can_generate(cls, options: dict) -> bool:
        return options.get("ARGUMENTS", "flux") in ARGUMENT_BUILDERS

    @classmethod
    def can_edit(cls, options: dict) -> bool:
        return options.get("ARGUMENTS", "flux") in EDIT_ARGUMENT_BUILDERS

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self.endpoint = options["ENDPOINT"]
        kind = options.get("ARGUMENTS", "flux")
        if kind not in ARGUMENT_BUILDERS and kind not in EDIT_ARGUMENT_BUILDERS:
            raise ImproperlyConfigured(
                f"{name}: ARGUMENTS must be one of "
                f"{', '.join([*ARGUMENT_BUILDERS, *EDIT_ARGUMENT_BUILDERS])}, not {kind!r}"
            )
        self.build_arguments = ARGUMENT_BUILDERS.get(kind)
        self.build_edit_arguments = EDIT_ARGUMENT_BUILDERS.get(kind)
        self._uploads: dict[str, tuple[str, float]] = {}  # source sha1 -> (url, uploaded at)
        self._uploads_lock = threading.Lock()
        self._upload_locks: dict[str, threading.Lock] = {}  # one upload of a source at a time
        if self.build_arguments is nano_banana_pro_arguments:
            nano_banana_pro_resolution(options, name)  # a bad setting fails here, not per job
        self.timeout = float(options.get("TIMEOUT", 180))
        self.poll_interval = float(options.get("POLL_INTERVAL", 1.0))
        # fal-client retries 408/409/429 and connection errors itself, up to this module
        # constant (it has no per-client setting); bounding it keeps a task's time predictable.
        fal_client.client.MAX_ATTEMPTS = int(options.get("MAX_ATTEMPTS", 3))
        self.client = fal_client.SyncClient(
            key=settings.FAL_KEY or None, default_timeout=float(options.get("HTTP_TIMEOUT", 60))
        )
        download = settings.KARASU["DOWNLOAD"]
        self.allowed_hosts = options.get("ALLOWED_HOSTS", download["ALLOWED_HOSTS"])
        # Per model: a 4K PNG can pass the shared cap that suits 1-megapixel results.
        self.max_bytes = int(options.get("MAX_BYTES", download["MAX_BYTES"]))
        self.max_pixels = int(download["MAX_PIXELS"])

    def generate(self, prompt, *, aspect_ratio="1:1", seed=None):
        if self.build_arguments is None:
            raise PermanentProviderError(
                f"{self.name}: this model edits images; it needs a source image"
            )
        return self._run(self.build_arguments(prompt, aspect_ratio, seed, self.options), seed)

    def edit(self, prompt, source: SourceImage, *, aspect_ratio="1:1", seed=None):
        if self.build_edit_arguments is None:
            raise PermanentProviderError(f"{self.name}: this model cannot edit images")
        with self._fal_errors():
            image_url = self.upload(source)
        arguments = self.build_edit_arguments(prompt, image_url, aspect_ratio, seed, self.options)
        return self._run(arguments, seed)

    def upload(self, source: SourceImage) -> str:
        """The source on fal's CDN through fal-client's upload; one upload per source and
        process serves every job of a request for UPLOAD_REUSE_SECONDS."""
        key = source.sha1
        with self._uploads_lock:
            lock = self._upload_locks.setdefault(key, threading.Lock())
        # The first jobs of a request start together: one uploads, the others wait for its
        # URL instead of each uploading the same bytes.
        with lock:
            url, at = self._uploads.get(key, ("", 0.0))
            if url and time.monotonic() - at < UPLOAD_REUSE_SECONDS:
                return url
            url = self.client.upload(
                source.data,
                source.content_type,
                file_name=source.name,
                lifecycle=fal_client.StorageSettings(expires_in=UPLOAD_EXPIRES),
            )
            self._uploads[key] = (url, time.monotonic())
        return url

    def _run(self, arguments: dict, seed) -> GeneratedImage:
        with self._fal_errors():
            handle = self.client.submit(self.endpoint, arguments)
            result = self._wait(handle)
        return self._image_from(result, handle.request_id, seed)

    @contextlib.contextmanager
    def _fal_errors(self):
        """fal-client's and httpx's errors as provider errors (transient or permanent)."""
        try:
            yield
        except fal_client.client.FalClientHTTPError as exc:
            raise self._http_error(exc) from None
        except httpx.HTTPStatusError as exc:  # the upload's token request raises these
            response = exc.response
            raise error_for_status(
                self.name,
                response.status_code,
                response.text[:200],
                response.headers.get("retry-after"),
            ) from None
        except httpx.TimeoutException:
            raise TransientProviderError(f"{self.name}: request timed out") from None
        except httpx.HTTPError as exc:
            raise TransientProviderError(f"{self.name}: connection failed: {exc}") from None

    def _wait(self, handle) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            status = handle.status()
            if isinstance(status, fal_client.Completed):
                if status.error:
                    raise self._completed_error(status.error, status.error_type)
                return handle.get()
            if time.monotonic() >= deadline:
                # Best effort: the provider may have finished or be unreachable.
                with contextlib.suppress(fal_client.client.FalClientError, httpx.HTTPError):
                    handle.cancel()
                raise TransientProviderError(
                    f"{self.name}: no result after {self.timeout:.0f}s "
                    f"(request {handle.request_id} cancelled)"
                )
            time.sleep(self.poll_interval)

    def _completed_error(self, error, error_type):
        if (error_type or "").lower() in CONTENT_POLICY_TYPES:
            return PermanentProviderError(f"{self.name}: rejected by content policy: {error}")
        return TransientProviderError(f"{self.name}: generation failed: {error}")

    def _http_error(self, exc):
        if (exc.error_type or "").lower() in CONTENT_POLICY_TYPES:
            return PermanentProviderError(f"{self.name}: rejected by content policy")
        return error_for_status(
            self.name,
            exc.status_code,
            str(exc.message),
            exc.response_headers.get("retry-after") or exc.response_headers.get("Retry-After"),
        )

    def _image_from(self, result: dict, request_id: str, seed: int | None) -> GeneratedImage:
        images = result.get("images") if isinstance(result, dict) else None
        if not images or not isinstance(images[0], dict) or not images[0].get("url"):
            raise PermanentProviderError(f"{self.name}: result has no image")
        if any(result.get("has_nsfw_concepts") or []):
            raise PermanentProviderError(f"{self.name}: rejected by the safety checker")
        downloaded = download_image(
            images[0]["url"],
            allowed_hosts=self.allowed_hosts,
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
        )
        # The body stays in its temporary file; ingest streams it into storage and closes it.
        return GeneratedImage(
            downloaded.body,
            content_type=downloaded.content_type,
            width=downloaded.width,
            height=downloaded.height,
            seed=result.get("seed", seed),
            provider_request_id=request_id,
        )
