import pytest
import respx

from generation.providers import reset_cache
from tests.support.fake_http import FakeHTTPServer
from tests.support.fal_api import FAL_KEY, route_fal_dns
from tests.support.llm_answers import CLAUDE_KEY

FAL_MODELS = (
    "flux-schnell",
    "flux-ultra",
    "nano-banana",
    "flux-pro",
    "nano-banana-pro",
    "nano-banana-edit",
    "flux-kontext",
)


@pytest.fixture(autouse=True)
def fresh_providers():
    reset_cache()
    yield
    reset_cache()


@pytest.fixture
def claude(settings, monkeypatch):
    """A fake Claude API on 127.0.0.1 (queue its answers with ``claude.reply``), asked for
    25 prompts a call and never retried by the SDK."""
    server = FakeHTTPServer()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    settings.ANTHROPIC_API_KEY = CLAUDE_KEY
    settings.KARASU["LLMS"]["claude"] = {
        **settings.KARASU["LLMS"]["claude"],
        "BATCH_SIZE": 25,
        "MAX_RETRIES": 0,
    }
    yield server
    server.close()


@pytest.fixture
def fal(settings, monkeypatch):
    """fal.ai's API as a respx router (see tests/support/fal_api.py), with the key set, every
    fal model polling fast, and fal's CDN resolved without a network."""
    settings.FAL_KEY = FAL_KEY
    for name in FAL_MODELS:
        settings.KARASU["IMAGE_MODELS"][name] = {
            **settings.KARASU["IMAGE_MODELS"][name],
            "POLL_INTERVAL": 0.01,
            "TIMEOUT": 5,
        }
    route_fal_dns(monkeypatch)
    with respx.mock(assert_all_called=False) as router:
        yield router
