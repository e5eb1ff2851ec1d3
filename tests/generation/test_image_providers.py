"""FLUX, Nano Banana and Nano Banana Pro through the real fal-client with HTTP faked by
respx; safe downloads."""

import io
import json

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

from generation.providers import (
    PermanentProviderError,
    TransientProviderError,
    available_image_models,
    get_image_model,
    reset_cache,
)
from generation.providers.demo import DemoImageModel
from tests.support.fal_api import FAL_KEY, QUEUE, pinned, queue_routes
from tests.support.images import jpeg, noise_png, picture, png

IMAGE_URL = "https://v3.fal.media/files/crow/result.jpg"


def image_route(router, url=IMAGE_URL, **response):
    response.setdefault("content", jpeg())
    response.setdefault("headers", {"content-type": "image/jpeg"})
    return router.get(**pinned(url)).mock(return_value=httpx.Response(200, **response))


def test_flux_schnell_happy_path(fal):
    submit, _ = queue_routes(
        fal,
        "fal-ai/flux/schnell",
        {"images": [{"url": IMAGE_URL}], "seed": 42, "has_nsfw_concepts": [False]},
    )
    image_route(fal)
    image = get_image_model("flux-schnell").generate("a crow", aspect_ratio="16:9", seed=42)
    arguments = json.loads(submit.calls.last.request.content)
    assert arguments == {
        "prompt": "a crow",
        "image_size": "landscape_16_9",
        "num_images": 1,
        "output_format": "jpeg",
        "enable_safety_checker": True,
        "seed": 42,
    }
    assert submit.calls.last.request.headers["authorization"] == f"Key {FAL_KEY}"
    assert (image.width, image.height, image.content_type) == (64, 48, "image/jpeg")
    assert image.seed == 42 and image.provider_request_id == "req-123"
    assert image.data == jpeg()


def test_endpoint_specific_arguments(fal):
    ultra, _ = queue_routes(
        fal, "fal-ai/flux-pro/v1.1-ultra", {"images": [{"url": IMAGE_URL}], "seed": 1}
    )
    banana, _ = queue_routes(fal, "fal-ai/nano-banana", {"images": [{"url": IMAGE_URL}]})
    pro, _ = queue_routes(fal, "fal-ai/flux-pro/v1.1", {"images": [{"url": IMAGE_URL}]})
    image_route(fal)
    get_image_model("flux-ultra").generate("a crow", aspect_ratio="9:16", seed=1)
    get_image_model("nano-banana").generate("a crow", aspect_ratio="4:3", seed=5)
    get_image_model("flux-pro").generate("a crow", aspect_ratio="3:4")
    ultra_args = json.loads(ultra.calls.last.request.content)
    assert ultra_args["aspect_ratio"] == "9:16" and ultra_args["safety_tolerance"] == "2"
    assert "image_size" not in ultra_args
    banana_args = json.loads(banana.calls.last.request.content)
    assert banana_args["aspect_ratio"] == "4:3" and "seed" not in banana_args
    pro_args = json.loads(pro.calls.last.request.content)
    assert pro_args["image_size"] == "portrait_4_3" and "seed" not in pro_args


def test_nano_banana_pro_sends_its_endpoint_and_1k_by_default(fal):
    submit, _ = queue_routes(
        fal,
        "fal-ai/nano-banana-pro",
        {"images": [{"url": IMAGE_URL, "content_type": "image/png"}], "description": ""},
        request_id="pro-1",
    )
    image_route(fal, content=png((64, 64), (30, 20, 10)), headers={"content-type": "image/png"})
    image = get_image_model("nano-banana-pro").generate("a crow", aspect_ratio="16:9", seed=7)
    assert submit.calls.last.request.url == f"{QUEUE}/fal-ai/nano-banana-pro"
    assert json.loads(submit.calls.last.request.content) == {
        "prompt": "a crow",
        "aspect_ratio": "16:9",
        "num_images": 1,
        "output_format": "png",
        "resolution": "1K",
        "seed": 7,
    }
    assert submit.calls.last.request.headers["authorization"] == f"Key {FAL_KEY}"
    assert (image.content_type, image.seed, image.provider_request_id) == ("image/png", 7, "pro-1")


@pytest.mark.parametrize("configured, sent", [("2K", "2K"), ("4k", "4K"), (None, "1K")])
def test_nano_banana_pro_resolution_comes_from_settings(fal, settings, configured, sent):
    settings.KARASU["IMAGE_MODELS"]["nano-banana-pro"]["RESOLUTION"] = configured
    submit, _ = queue_routes(fal, "fal-ai/nano-banana-pro", {"images": [{"url": IMAGE_URL}]})
    image_route(fal)
    get_image_model("nano-banana-pro").generate("a crow", aspect_ratio="1:1")
    arguments = json.loads(submit.calls.last.request.content)
    assert arguments["resolution"] == sent and "seed" not in arguments


def test_nano_banana_pro_refuses_an_unknown_resolution(fal, settings):
    settings.KARASU["IMAGE_MODELS"]["nano-banana-pro"]["RESOLUTION"] = "8K"
    # Refused as the model loads (not when a job builds its arguments), naming the value.
    with pytest.raises(
        ImproperlyConfigured,
        match=r"^nano-banana-pro: RESOLUTION must be one of 1K, 2K, 4K, not '8K'$",
    ):
        get_image_model("nano-banana-pro")
    # The refusal was the value's: corrected, the same entry loads and sends it.
    settings.KARASU["IMAGE_MODELS"]["nano-banana-pro"]["RESOLUTION"] = "2K"
    submit, _ = queue_routes(fal, "fal-ai/nano-banana-pro", {"images": [{"url": IMAGE_URL}]})
    image_route(fal)
    get_image_model("nano-banana-pro").generate("a crow", aspect_ratio="1:1")
    assert json.loads(submit.calls.last.request.content)["resolution"] == "2K"


@pytest.mark.parametrize(
    "output_format, content_type, content",
    [("jpeg", "image/jpeg", jpeg()), ("webp", "image/webp", picture("WEBP"))],
    ids=["jpeg", "webp"],
)
def test_nano_banana_pro_output_format_comes_from_settings(
    fal, settings, output_format, content_type, content
):
    settings.KARASU["IMAGE_MODELS"]["nano-banana-pro"]["OUTPUT_FORMAT"] = output_format
    submit, _ = queue_routes(
        fal,
        "fal-ai/nano-banana-pro",
        {"images": [{"url": IMAGE_URL, "content_type": content_type}]},
    )
    image_route(fal, content=content, headers={"content-type": content_type})
    image = get_image_model("nano-banana-pro").generate("烏", aspect_ratio="1:1")
    assert json.loads(submit.calls.last.request.content)["output_format"] == output_format
    assert image.content_type == content_type and image.extension == output_format.replace(
        "jpeg", "jpg"
    )


def test_each_fal_model_may_set_its_own_download_cap(fal, settings):
    """MAX_BYTES on a model's entry replaces the shared DOWNLOAD cap for its results, either
    way: Nano Banana Pro's 64 MB lets a 4K PNG through a shared cap it would pass."""
    result = noise_png(40)  # about 4.8 kB
    settings.KARASU["DOWNLOAD"] = {**settings.KARASU["DOWNLOAD"], "MAX_BYTES": 1024}
    assert settings.KARASU["IMAGE_MODELS"]["nano-banana-pro"]["MAX_BYTES"] == 64 * 1024 * 1024
    for endpoint in ("fal-ai/nano-banana-pro", "fal-ai/flux/schnell"):
        queue_routes(fal, endpoint, {"images": [{"url": IMAGE_URL}]})
    image_route(fal, content=result, headers={"content-type": "image/png"})
    assert get_image_model("nano-banana-pro").generate("烏").width == 40
    with pytest.raises(PermanentProviderError, match="too large"):
        get_image_model("flux-schnell").generate("烏")  # the shared cap

    settings.KARASU["DOWNLOAD"] = {**settings.KARASU["DOWNLOAD"], "MAX_BYTES": 25 * 1024 * 1024}
    settings.KARASU["IMAGE_MODELS"]["flux-schnell"]["MAX_BYTES"] = 1024
    reset_cache()
    with pytest.raises(PermanentProviderError, match="too large"):
        get_image_model("flux-schnell").generate("烏")  # its own, below the shared one


def test_nano_banana_pro_is_offered_only_with_a_fal_key(settings):
    settings.FAL_KEY = FAL_KEY
    assert dict(available_image_models())["nano-banana-pro"] == "Nano Banana Pro"
    settings.FAL_KEY = ""
    assert "nano-banana-pro" not in dict(available_image_models())
    with pytest.raises(PermanentProviderError, match="needs FAL_KEY"):
        get_image_model("nano-banana-pro")


def test_429_on_submit_keeps_retry_after(fal):
    fal.post(f"{QUEUE}/fal-ai/flux/schnell").mock(
        return_value=httpx.Response(
            429, json={"detail": "Too many requests"}, headers={"retry-after": "12"}
        )
    )
    with pytest.raises(TransientProviderError) as error:
        get_image_model("flux-schnell").generate("a crow")
    assert error.value.retry_after == 12
    assert "429" in error.value.reason


def test_500_then_success(fal):
    submit, _ = queue_routes(fal, "fal-ai/flux/schnell", {"images": [{"url": IMAGE_URL}]})
    accepted = submit.return_value
    submit.side_effect = [
        httpx.Response(500, json={"detail": "internal"}, headers={"x-fal-request-id": "r"}),
        accepted,
    ]
    image_route(fal)
    model = get_image_model("flux-schnell")
    with pytest.raises(TransientProviderError, match="500"):
        model.generate("a crow")
    assert model.generate("a crow").provider_request_id == "req-123"


def test_422_content_policy_is_permanent(fal):
    fal.post(f"{QUEUE}/fal-ai/flux/schnell").mock(
        return_value=httpx.Response(
            422,
            json={
                "detail": "Prompt violates content policy",
                "error_type": "content_policy_violation",
            },
        )
    )
    with pytest.raises(PermanentProviderError, match="content policy"):
        get_image_model("flux-schnell").generate("something forbidden")


def test_safety_checker_and_failed_generation(fal):
    queue_routes(
        fal, "fal-ai/flux/schnell", {"images": [{"url": IMAGE_URL}], "has_nsfw_concepts": [True]}
    )
    with pytest.raises(PermanentProviderError, match="safety checker"):
        get_image_model("flux-schnell").generate("a crow")


def test_auth_error_is_permanent_and_never_shows_the_key(fal):
    fal.post(f"{QUEUE}/fal-ai/flux/schnell").mock(
        return_value=httpx.Response(401, json={"detail": f"Invalid key: Key {FAL_KEY}"})
    )
    with pytest.raises(PermanentProviderError) as error:
        get_image_model("flux-schnell").generate("a crow")
    assert "401" in str(error.value)
    assert "SECRETSECRET" not in str(error.value)


def test_timeout_keeps_the_request_for_the_next_attempt(fal, settings):
    """A timeout is not a give-up: fal may still deliver, and the next attempt resumes the
    same request (tests/generation/test_fal_queue.py), so nothing is cancelled."""
    settings.KARASU["IMAGE_MODELS"]["flux-schnell"]["TIMEOUT"] = 0.05
    _, cancel = queue_routes(
        fal, "fal-ai/flux/schnell", {}, status={"status": "IN_PROGRESS", "logs": []}
    )
    with pytest.raises(TransientProviderError, match="kept for the next attempt"):
        get_image_model("flux-schnell").generate("a crow")
    assert not cancel.called


@pytest.mark.parametrize(
    "url, route_kwargs, message",
    [
        ("https://10.0.0.5/x.jpg", None, "private address"),
        ("http://v3.fal.media/x.jpg", None, "not https"),
        ("https://example.com/x.jpg", None, "not allowed"),
        ("https://evil.fal.media/x.jpg", None, "resolves to a private address"),
        (
            IMAGE_URL,
            {"status_code": 302, "headers": {"location": "https://example.com/x.jpg"}},
            "not allowed",
        ),
        (
            IMAGE_URL,
            {"content": b"x" * 2048, "headers": {"content-type": "image/jpeg"}},
            "too large",
        ),
        (
            IMAGE_URL,
            {"content": b"<html>", "headers": {"content-type": "text/html"}},
            "not an image",
        ),
        (
            IMAGE_URL,
            {"content": b"not really a jpeg", "headers": {"content-type": "image/jpeg"}},
            "not a valid image",
        ),
    ],
)
def test_unsafe_downloads_are_permanent_errors(fal, settings, url, route_kwargs, message):
    settings.KARASU["DOWNLOAD"] = {**settings.KARASU["DOWNLOAD"], "MAX_BYTES": 1024}
    queue_routes(fal, "fal-ai/flux/schnell", {"images": [{"url": url}]})
    if route_kwargs is not None:
        status = route_kwargs.pop("status_code", 200)
        fal.get(**pinned(url)).mock(return_value=httpx.Response(status, **route_kwargs))
    with pytest.raises(PermanentProviderError, match=message):
        get_image_model("flux-schnell").generate("a crow")


def test_redirect_within_allowed_hosts_is_followed(fal):
    other = "https://cdn.fal.media/files/final.jpg"
    queue_routes(fal, "fal-ai/flux/schnell", {"images": [{"url": IMAGE_URL}]})
    fal.get(**pinned(IMAGE_URL)).mock(return_value=httpx.Response(302, headers={"location": other}))
    image_route(fal, other)
    assert get_image_model("flux-schnell").generate("a crow").width == 64


def test_decompression_bomb_is_rejected(fal, settings):
    settings.KARASU["DOWNLOAD"] = {**settings.KARASU["DOWNLOAD"], "MAX_PIXELS": 1000}
    queue_routes(fal, "fal-ai/flux/schnell", {"images": [{"url": IMAGE_URL}]})
    image_route(fal, content=jpeg((100, 100)))
    with pytest.raises(PermanentProviderError, match="too large"):
        get_image_model("flux-schnell").generate("a crow")


# Demo -------------------------------------------------------------------------------------
def test_demo_renders_distinct_images_per_prompt():
    model = get_image_model("demo")
    first = model.generate("a crow at dawn", aspect_ratio="16:9")
    second = model.generate("a heron at dusk", aspect_ratio="16:9")
    assert first.data != second.data
    with Image.open(io.BytesIO(first.data)) as picture:
        assert picture.size == (640, 360) == (first.width, first.height)
    assert model.generate("a crow at dawn", aspect_ratio="16:9").data == first.data


def test_demo_knobs_inject_failures_honestly():
    flaky = DemoImageModel("demo", FAILURE_RATE=1.0)
    # Never more than two transient failures in a row, so three retries always suffice.
    for _ in range(2):
        with pytest.raises(TransientProviderError):
            flaky.generate("a crow")
    assert flaky.generate("a crow").width == 512
    strict = DemoImageModel("demo", REJECT_RATE=0.5)
    prompts = [f"prompt number {i}" for i in range(40)]
    rejected = [p for p in prompts if strict.would_reject(p)]
    assert 5 < len(rejected) < 35
    for prompt in rejected[:3]:
        with pytest.raises(PermanentProviderError, match="content policy"):
            strict.generate(prompt)
