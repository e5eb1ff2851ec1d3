import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "karasu-metrics-test-token-7f3a"


@pytest.fixture
def metrics_token(settings):
    settings.KARASU_METRICS_TOKEN = TOKEN
    return TOKEN


def parse(text: str) -> dict:
    """{(sample name, frozenset of label items): value} of a Prometheus text exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


@pytest.fixture
def scrape(client, metrics_token):
    """GET /metrics with the token, as Prometheus does; returns the parsed samples."""

    def get() -> "Samples":
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.content[:500]
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
        return Samples(parse(response.content.decode()))

    return get


class Samples(dict):
    def value(self, name: str, **labels) -> float:
        """The sample's value; KeyError if the scrape does not have it."""
        return self[name, frozenset(labels.items())]

    def get_value(self, name: str, default=None, **labels):
        return self.get((name, frozenset(labels.items())), default)

    def names(self) -> set[str]:
        return {name for name, _ in self}
