"""FLUX, Nano Banana and Nano Banana Pro on fal.ai, through the official fal-client and its
queue API.

The editing endpoints (Nano Banana edit, FLUX.1 Kontext [pro]) make variations of a library
image. The source goes up to fal's CDN through fal-client's upload, so the site itself need
not be reachable from fal."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import fal_client
import fal_client.client
import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from .download import download_image
from .errors import (
    HandedBack,
    PermanentProviderError,
    RequestFailed,
    RequestGone,
    TransientProviderError,
    error_for_status,
)
from .images import GeneratedImage, ImageModel, ProviderCall, SourceImage

logger = logging.getLogger(__name__)

# FLUX endpoints take a named size, and the others take an aspect ratio.
FLUX_IMAGE_SIZES = {
    "1:1": "square_hd",
    "4:3": "landscape_4_3",
    "3:4": "portrait_4_3",
    "16:9": "landscape_16_9",
    "9:16": "portrait_16_9",
}
CONTENT_POLICY_TYPES = {"content_policy_violation", "content_policy", "nsfw"}
# Nano Banana Pro's output sizes, whose long edge is about 1024, 2048 or 4096 pixels. fal
# charges 4K at twice the 1K/2K price.
NANO_BANANA_PRO_RESOLUTIONS = ("1K", "2K", "4K")
# While waiting between polls, a stopping worker is noticed within this many seconds.
STOP_CHECK_SECONDS = 0.1


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
    """The configured RESOLUTION (default 1K), checked here because fal would refuse any
    other value."""
    resolution = str(options.get("RESOLUTION") or "1K").strip().upper()
    if resolution not in NANO_BANANA_PRO_RESOLUTIONS:
        raise ImproperlyConfigured(
            f"{name}: RESOLUTION must be one of {', '.join(NANO_BANANA_PRO_RESOLUTIONS)}, "
            f"not {options.get('RESOLUTION')!r}"
        )
    return resolution


def nano_banana_pro_arguments(prompt, aspect_ratio, seed, options):
    # These are Nano Banana's arguments, plus a resolution and a seed, which the Pro
    # endpoint's schema also takes.
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


# For the editing endpoints, the prompt is an instruction for the uploaded source image.
def nano_banana_edit_arguments(prompt, image_url, aspect_ratio, seed, options):
    # fal-ai/nano-banana/edit takes image_urls (a list, required), aspect_ratio ("auto" or
    # a ratio) and, unlike the text-to-image endpoint, an optional seed.
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
    # fal-ai/flux-pro/kontext takes one image_url (required), and FLUX's safety tolerance as a
    # string.
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
# An uploaded source is reused by the request's other jobs for this many seconds. fal keeps
# it for a day (UPLOAD_EXPIRES), so a reused URL is always still there.
UPLOAD_REUSE_SECONDS = 6 * 3600
UPLOAD_EXPIRES = "1d"


class FalImageModel(ImageModel):
    """One fal endpoint, either text to image (ARGUMENTS in ARGUMENT_BUILDERS) or image
    editing (ARGUMENTS in EDIT_ARGUMENT_BUILDERS)."""

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
        # Source sha1 -> (url, when it was uploaded).
        self._uploads: dict[str, tuple[str, float]] = {}
        self._uploads_lock = threading.Lock()
        # One lock per source, so that it is uploaded once at a time.
        self._upload_locks: dict[str, threading.Lock] = {}
        if self.build_arguments is nano_banana_pro_arguments:
            # A bad setting fails here, once, rather than in every job.
            nano_banana_pro_resolution(options, name)
        self.timeout = float(options.get("TIMEOUT", 180))
        self.poll_interval = float(options.get("POLL_INTERVAL", 1.0))
        # A result's download is tried this many times in place, waiting from
        # DOWNLOAD_WAIT seconds.
        self.download_attempts = int(options.get("DOWNLOAD_ATTEMPTS", 3))
        self.download_wait = float(options.get("DOWNLOAD_WAIT", 0.5))
        self._handles: dict[str, object] = {}  # Request id -> the handle of this submit.
        # fal-client retries 408/409/429 and connection errors itself, up to this module
        # constant, which has no per-client setting. Bounding it keeps a task's time
        # predictable.
        fal_client.client.MAX_ATTEMPTS = int(options.get("MAX_ATTEMPTS", 3))
        # A submission is sent by Karasu itself (see _post_submission), tried this many
        # times only while the connection cannot be made.
        self.submit_attempts = max(1, int(options.get("MAX_ATTEMPTS", 3)))
        self.client = fal_client.SyncClient(
            key=settings.FAL_KEY or None, default_timeout=float(options.get("HTTP_TIMEOUT", 60))
        )
        download = settings.KARASU["DOWNLOAD"]
        self.allowed_hosts = options.get("ALLOWED_HOSTS", download["ALLOWED_HOSTS"])
        # The cap is per model, because a 4K PNG can pass the shared cap that suits
        # 1-megapixel results.
        self.max_bytes = int(options.get("MAX_BYTES", download["MAX_BYTES"]))
        self.max_pixels = int(download["MAX_PIXELS"])

    def submit(self, prompt, *, aspect_ratio="1:1", seed=None) -> ProviderCall:
        if self.build_arguments is None:
            raise PermanentProviderError(
                f"{self.name}: this model edits images; it needs a source image"
            )
        return self._submit(self.build_arguments(prompt, aspect_ratio, seed, self.options))

    def submit_edit(
        self, prompt, source: SourceImage, *, aspect_ratio="1:1", seed=None
    ) -> ProviderCall:
        if self.build_edit_arguments is None:
            raise PermanentProviderError(f"{self.name}: this model cannot edit images")
        with self._fal_errors():
            image_url = self.upload(source)
        arguments = self.build_edit_arguments(prompt, image_url, aspect_ratio, seed, self.options)
        return self._submit(arguments)

    def upload(self, source: SourceImage) -> str:
        """Put the source on fal's CDN through fal-client's upload, and return its URL. One
        upload per source and process serves every job of a request for
        UPLOAD_REUSE_SECONDS."""
        key = source.sha1
        with self._uploads_lock:
            lock = self._upload_locks.setdefault(key, threading.Lock())
        # The first jobs of a request start together. One uploads, and the others wait for
        # its URL instead of each uploading the same bytes.
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

    def _submit(self, arguments: dict) -> ProviderCall:
        with self._fal_errors():
            handle = self._post_submission(arguments)
        # The URLs that fal answered with serve this process's first wait. A later wait
        # (another worker, a retry) rebuilds them from the stored id and endpoint.
        with self._uploads_lock:
            self._handles[handle.request_id] = handle
        return ProviderCall(handle.request_id, self.endpoint)

    def _post_submission(self, arguments: dict) -> fal_client.SyncRequestHandle:
        """POST the submission to fal's queue, as fal-client's ``submit`` does, but retried
        only where the request provably never reached fal (the connection could not be
        made).

        fal-client's own retries also resend after a read timeout, a dropped connection or
        a 409, when fal may have accepted (and will bill) the first one: each resend was a
        second paid image. fal documents no idempotency key and no way to find a request
        without its id, so a lost reply is a transient error, and only the job's next
        attempt submits again, once.
        """
        http = self.client._client  # fal-client's authenticated client (with backup hosts)
        url = fal_client.client.QUEUE_URL_FORMAT + self.endpoint
        for attempt in range(1, self.submit_attempts + 1):
            try:
                response = http.post(url, json=arguments, timeout=self.client.default_timeout)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if attempt == self.submit_attempts:
                    raise
                time.sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                raise TransientProviderError(
                    f"{self.name}: the submission's reply was lost ({exc.__class__.__name__}); "
                    "fal may have accepted it, and the next attempt submits again"
                ) from None
        fal_client.client._raise_for_status(response)
        data = response.json()
        return fal_client.SyncRequestHandle(
            request_id=data["request_id"],
            response_url=data["response_url"],
            status_url=data["status_url"],
            cancel_url=data["cancel_url"],
            client=http,
        )

    def _handle(self, call: ProviderCall):
        with self._uploads_lock:
            handle = self._handles.pop(call.request_id, None)
        return handle or self.client.get_handle(call.endpoint, call.request_id)

    def result(self, call: ProviderCall, *, deadline=None, stop=None) -> GeneratedImage:
        """Wait for the status, then fetch the result, of a submitted request. The download
        is retried in place.

        Nothing here submits. A timeout, a status or result error, or a download that keeps
        failing leaves the request to be resumed by the next attempt.
        """
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        handle = self._handle(call)
        with self._fal_errors(resuming=call):
            result = self._wait(handle, deadline, stop)
        return self._image_from(result, call.request_id)

    def cancel(self, call: ProviderCall) -> None:
        # This is best effort. The request may have finished (ALREADY_COMPLETED) or
        # expired, or fal may be unreachable. Cancelling is only ever a saving, and never
        # needed for safety.
        try:
            self.client.get_handle(call.endpoint, call.request_id).cancel()
        except (fal_client.client.FalClientError, httpx.HTTPError) as exc:
            logger.info("%s: could not cancel request %s: %s", self.name, call.request_id, exc)

    @contextlib.contextmanager
    def _fal_errors(self, resuming: ProviderCall | None = None):
        """Raise fal-client's and httpx's errors as provider errors (transient or permanent).

        While ``resuming`` a request, a 404 means that fal no longer knows it (it is unknown
        or expired). That raises RequestGone, so that it is submitted again rather than
        failed."""
        try:
            yield
        except fal_client.client.FalClientHTTPError as exc:
            if resuming is not None and exc.status_code == 404:
                raise RequestGone(
                    f"{self.name}: request {resuming.request_id} is unknown or expired"
                ) from None
            raise self._http_error(exc) from None
        except httpx.HTTPStatusError as exc:  # The upload's token request raises these.
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

    def _wait(self, handle, deadline: float, stop) -> dict:
        while True:
            status = handle.status()
            if isinstance(status, fal_client.Completed):
                if status.error:
                    raise self._completed_error(status.error, status.error_type)
                return handle.get()
            if time.monotonic() >= deadline:
                # It is not cancelled, because fal may still deliver it and the next attempt
                # resumes it.
                raise TransientProviderError(
                    f"{self.name}: no result after {self.timeout:.0f}s "
                    f"(request {handle.request_id} kept for the next attempt)"
                )
            # The pause between polls is taken in short steps, so that a stopping worker
            # hands back at once.
            next_poll = min(time.monotonic() + self.poll_interval, deadline)
            while (left := next_poll - time.monotonic()) > 0:
                if stop is not None and stop():
                    raise HandedBack(f"{self.name}: request {handle.request_id} handed back")
                time.sleep(min(left, STOP_CHECK_SECONDS))

    def _completed_error(self, error, error_type):
        if (error_type or "").lower() in CONTENT_POLICY_TYPES:
            return PermanentProviderError(f"{self.name}: rejected by content policy: {error}")
        # It failed at fal and is not billed, so the next attempt submits anew.
        return RequestFailed(f"{self.name}: generation failed: {error}")

    def _http_error(self, exc):
        if (exc.error_type or "").lower() in CONTENT_POLICY_TYPES:
            return PermanentProviderError(f"{self.name}: rejected by content policy")
        return error_for_status(
            self.name,
            exc.status_code,
            str(exc.message),
            exc.response_headers.get("retry-after") or exc.response_headers.get("Retry-After"),
        )

    def _image_from(self, result: dict, request_id: str) -> GeneratedImage:
        images = result.get("images") if isinstance(result, dict) else None
        if not images or not isinstance(images[0], dict) or not images[0].get("url"):
            raise PermanentProviderError(f"{self.name}: result has no image")
        if any(result.get("has_nsfw_concepts") or []):
            raise PermanentProviderError(f"{self.name}: rejected by the safety checker")
        # The image is paid for and fal keeps it for days, so a transient download failure
        # is tried again here, never by asking the model again.
        for attempt in Retrying(
            retry=retry_if_exception_type(TransientProviderError),
            stop=stop_after_attempt(self.download_attempts),
            wait=wait_exponential_jitter(multiplier=self.download_wait, max=8 * self.download_wait),
            before_sleep=lambda state: logger.warning(
                "%s: downloading the result of %s failed (%s); trying again.",
                self.name,
                request_id,
                state.outcome.exception(),
            ),
            reraise=True,
        ):
            with attempt:
                downloaded = download_image(
                    images[0]["url"],
                    allowed_hosts=self.allowed_hosts,
                    max_bytes=self.max_bytes,
                    max_pixels=self.max_pixels,
                )
        # The body stays in its temporary file, and ingest streams it into storage and
        # closes it. Without a seed in the result (Nano Banana takes none), the job's own
        # seed is recorded.
        return GeneratedImage(
            downloaded.body,
            content_type=downloaded.content_type,
            width=downloaded.width,
            height=downloaded.height,
            seed=result.get("seed"),
            provider_request_id=request_id,
        )
