"""Every generated image gets an alt text (its Wagtail description) written with its prompt,
and the tokens the LLM reports are recorded on the request."""

from __future__ import annotations

import json

import httpx
import pytest
import respx
from django.urls import reverse
from wagtail.images import get_image_model
from wagtail.models import Collection

from generation import actions, services
from generation.ingest import ingest
from generation.models import GenerationJob, GenerationRequest
from generation.providers import (
    MAX_ALT_TEXT_CHARS,
    GeneratedImage,
    PermanentProviderError,
    TokenUsage,
    get_llm,
)
from generation.providers.base import PromptBatch
from generation.providers.demo import render
from tests.support.consumers import wait_for
from tests.support.factories import make_request
from tests.support.llm_answers import (
    OPENAI_KEY,
    claude_message,
    completion,
    numbered,
)

Image = get_image_model()
Req = GenerationRequest.Status
HOSTILE = '<img src=x onerror="alert(1)"> A crow & a "fox"'


@pytest.fixture
def claude(claude, settings):
    """The shared fake Claude API, asked for two prompts a call."""
    settings.KARASU["LLMS"]["claude"]["BATCH_SIZE"] = 2
    return claude


# Expansion: alt texts on the jobs, tokens on the request -----------------------------------
def test_claude_alt_texts_land_on_the_jobs_and_its_tokens_on_the_request(db, collections, claude):
    prompts = numbered(0, 3)
    alts = ["A crow on a gate", "  ", "Two crows in fog over a pagoda"]
    claude.reply(
        body=claude_message(
            [{"prompt": p, "alt_text": a} for p, a in zip(prompts[:2], alts[:2], strict=True)],
            usage=(812, 301),
        )
    )
    claude.reply(
        body=claude_message([{"prompt": prompts[2], "alt_text": alts[2]}], usage=(845, 150))
    )
    request = make_request(3, with_jobs=False, status=Req.QUEUED, llm="claude")
    services.expand_request(request.pk)
    request.refresh_from_db()
    jobs = list(request.jobs.order_by("index"))
    assert [job.prompt for job in jobs] == prompts
    # The blank one is mended from its prompt: no job goes without an alt text.
    assert [job.alt_text for job in jobs] == [
        "A crow on a gate",
        "Crows scene number 1 with distinct lighting",
        "Two crows in fog over a pagoda",
    ]
    assert (request.llm_input_tokens, request.llm_output_tokens) == (812 + 845, 301 + 150)


def test_openai_tokens_are_recorded_from_its_usage_block(db, collections, settings):
    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.KARASU["LLMS"]["openai"] = {
        **settings.KARASU["LLMS"]["openai"],
        "BASE_URL": "https://llm.test/v1",
    }
    items = [{"prompt": p, "alt_text": f"Alt {i}"} for i, p in enumerate(numbered(0, 2))]
    with respx.mock(base_url="https://llm.test/v1") as router:
        router.post("/chat/completions").return_value = httpx.Response(
            200,
            json=completion(
                json.dumps({"prompts": items}),
                usage={"prompt_tokens": 400, "completion_tokens": 90},
            ),
        )
        request = make_request(2, with_jobs=False, status=Req.QUEUED, llm="openai")
        services.expand_request(request.pk)
    request.refresh_from_db()
    assert (request.llm_input_tokens, request.llm_output_tokens) == (400, 90)
    assert list(request.jobs.values_list("alt_text", flat=True)) == ["Alt 0", "Alt 1"]


def test_demo_expansion_gives_every_job_an_alt_text_and_uses_no_tokens(db, collections):
    request = make_request(20, with_jobs=False, status=Req.QUEUED, llm="demo")
    services.expand_request(request.pk)
    request.refresh_from_db()
    assert (request.llm_input_tokens, request.llm_output_tokens) == (0, 0)
    alt_texts = list(request.jobs.values_list("alt_text", flat=True))
    assert len(alt_texts) == 20 and all(0 < len(a) <= MAX_ALT_TEXT_CHARS for a in alt_texts)


def test_tokens_spent_on_an_expansion_a_cancel_overtook_are_still_counted(
    db, collections, monkeypatch
):
    request = make_request(2, with_jobs=False, status=Req.QUEUED, llm="demo")

    def cancelled_while_writing(*args, **kwargs):
        services.cancel_request(GenerationRequest.objects.get(pk=request.pk))
        return PromptBatch(numbered(0, 2), TokenUsage(120, 80))

    monkeypatch.setattr(get_llm("demo"), "request_prompts", cancelled_while_writing)
    assert services.expand_request(request.pk) == []
    request.refresh_from_db()
    assert request.status == Req.CANCELLED and not request.jobs.exists()
    assert (request.llm_input_tokens, request.llm_output_tokens) == (120, 80)


def test_tokens_of_an_expansion_that_fails_are_still_counted(db, collections, claude):
    """A call answered, then one truncated: both were paid for. The first call's prompts
    stay (they are written as soon as it returns) and the request says why it has fewer."""
    claude.reply(body=claude_message(numbered(0, 2), usage=(700, 200)))
    # Cut off at max_tokens inside its only prompt: nothing of it is complete (a streamed
    # call keeps the prompts it completed before the cut).
    claude.reply(body=claude_message([], stop_reason="max_tokens", usage=(710, 4096)))
    request = make_request(3, with_jobs=False, status=Req.QUEUED, llm="claude")
    with pytest.raises(PermanentProviderError, match="truncated"):
        services.expand_request(request.pk)
    request.refresh_from_db()
    assert list(request.jobs.values_list("prompt", flat=True)) == numbered(0, 2)
    assert request.status == Req.GENERATING and request.jobs_total == 2
    assert request.error.startswith("wrote 2 of 3 prompts: claude:")
    assert "truncated" in request.error
    assert (request.llm_input_tokens, request.llm_output_tokens) == (700 + 710, 200 + 4096)


def test_tokens_of_an_openai_answer_that_breaks_the_schema_are_counted(db, collections, settings):
    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.KARASU["LLMS"]["openai"] = {
        **settings.KARASU["LLMS"]["openai"],
        "BASE_URL": "https://llm.test/v1",
    }
    with respx.mock(base_url="https://llm.test/v1") as router:
        router.post("/chat/completions").return_value = httpx.Response(
            200,
            json=completion(
                "not json at all", usage={"prompt_tokens": 400, "completion_tokens": 90}
            ),
        )
        request = make_request(2, with_jobs=False, status=Req.QUEUED, llm="openai")
        with pytest.raises(PermanentProviderError, match="malformed output"):
            services.expand_request(request.pk)
    request.refresh_from_db()
    assert (request.llm_input_tokens, request.llm_output_tokens) == (400, 90)


# Ingest: the description ------------------------------------------------------------------
def make_job(prompt: str, alt_text: str = "") -> GenerationJob:
    request = make_request(1, with_jobs=False, status=Req.GENERATING, llm="demo")
    return GenerationJob.objects.create(
        request=request, index=0, prompt=prompt, alt_text=alt_text, seed=1
    )


def generated(prompt: str) -> GeneratedImage:
    return GeneratedImage(render(prompt, "1:1", 1), "image/jpeg", 512, 512, seed=1)


def test_ingest_files_the_alt_text_as_the_image_description(db, collections):
    job = make_job("A crow on a snowy torii gate at dawn, ink wash", "A crow on a snowy gate")
    image, created = ingest(job, generated(job.prompt))
    assert created
    image.refresh_from_db()
    assert image.description == "A crow on a snowy gate"
    assert image.default_alt_text == "A crow on a snowy gate"  # what Wagtail uses as alt


def test_a_job_without_an_alt_text_still_gets_a_description(db, collections):
    # Jobs written before alt texts existed, or whose alt text was cleared.
    job = make_job("A fox in the bamboo grove at dusk. Watercolour, close-up.")
    image, _ = ingest(job, generated(job.prompt))
    image.refresh_from_db()
    assert image.description == "A fox in the bamboo grove at dusk"


def test_the_description_is_editable_and_llm_text_is_escaped(editor, collections):
    job = make_job("A crow and a fox on a bridge at dusk", HOSTILE)
    image, _ = ingest(job, generated(job.prompt))
    edit_url = reverse("wagtailimages:edit", args=[image.pk])
    page = editor.get(edit_url).content.decode()
    assert 'name="description"' in page
    assert '<img src=x onerror="alert(1)">' not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; A crow &amp; a &quot;fox&quot;" in page
    response = editor.post(
        edit_url,
        {
            "title": image.title,
            "description": "Edited by hand",
            "collection": image.collection_id,
            "tags": "",
            "focal_point_x": "",
            "focal_point_y": "",
            "focal_point_width": "",
            "focal_point_height": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    image.refresh_from_db()
    assert image.description == "Edited by hand"


# End to end -------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_every_generated_image_has_its_alt_text(collections, thread_consumer):
    request = GenerationRequest.objects.create(
        theme="Crows over Kyoto",
        count=5,
        llm="demo",
        image_model="demo",
        collection=Collection.objects.get(name="Generated images"),
        auto_generate=True,
    )
    actions.generate(request)

    def finished():
        request.refresh_from_db()
        return request.is_terminal

    wait_for(finished, 60, message="the request to finish")
    assert request.status == Req.COMPLETED
    jobs = list(request.jobs.select_related("image"))
    assert len(jobs) == 5
    for job in jobs:
        assert job.alt_text and job.image.description == job.alt_text
        assert len(job.image.description) <= MAX_ALT_TEXT_CHARS
