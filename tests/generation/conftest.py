import pytest

from generation.providers import reset_cache


@pytest.fixture(autouse=True)
def fresh_providers():
    reset_cache()
    yield
    reset_cache()


@pytest.fixture
def demo(settings):
    """Tune the demo image provider's knobs for one test."""
    # Imported here: loading the tasks module registers its tasks (see tests/conftest.py).
    from huey_tasks.tasks import limiter_for

    def configure(**knobs):
        settings.KARASU["IMAGE_MODELS"]["demo"] = {
            **settings.KARASU["IMAGE_MODELS"]["demo"],
            **{k.upper(): v for k, v in knobs.items()},
        }
        reset_cache()
        limiter_for.cache_clear()

    configure(latency=0, failure_rate=0, reject_rate=0, concurrency=8)
    yield configure
    reset_cache()
    limiter_for.cache_clear()


@pytest.fixture
def editor(client, django_user_model):
    user = django_user_model.objects.create_superuser("editor", "e@example.com", "pw")
    client.force_login(user)
    return client
