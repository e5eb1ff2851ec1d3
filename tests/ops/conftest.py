import pytest

from tests.support.metrics import TOKEN, Samples, parse


@pytest.fixture
def metrics_token(settings):
    settings.KARASU_METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def scrape(client, metrics_token):
    """GET /metrics with the token, as Prometheus does; returns the parsed samples."""

    def get() -> Samples:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.content[:500]
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
        return Samples(parse(response.content.decode()))

    return get


@pytest.fixture(autouse=True)
def fresh_health_answer():
    """Each test's first /healthz hit checks for real, as a new web process's does (the
    answer is kept for a second per process, ops.health.latest_results)."""
    from ops import health

    health.latest_results.forget()
    yield
    health.latest_results.forget()
