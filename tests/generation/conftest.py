import pytest

from generation.providers import reset_cache


@pytest.fixture(autouse=True)
def fresh_providers():
    reset_cache()
    yield
    reset_cache()
