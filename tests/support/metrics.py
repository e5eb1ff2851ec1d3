"""Reading the site's Prometheus exposition (/metrics) in the tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# The bearer token the tests configure for /metrics.
TOKEN = "karasu-metrics-test-token-7f3a"


def parse(text: str) -> dict:
    """{(sample name, frozenset of label items): value} of a Prometheus text exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


class Samples(dict):
    def value(self, name: str, **labels) -> float:
        """The sample's value; KeyError if the scrape does not have it."""
        return self[name, frozenset(labels.items())]

    def get_value(self, name: str, default=None, **labels):
        return self.get((name, frozenset(labels.items())), default)

    def names(self) -> set[str]:
        return {name for name, _ in self}
