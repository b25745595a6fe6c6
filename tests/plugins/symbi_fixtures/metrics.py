"""Metrics: a service's ``/metrics``, scraped before and after what a test does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


class MetricSamples(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    """One scrape of ``/metrics``: each sample's value by name and sorted labels."""

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a sample not (yet) exposed."""
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def since(self, before: MetricSamples, name: str, **labels: str) -> float:
        """How much the sample moved since ``before``."""
        return self.value(name, **labels) - before.value(name, **labels)


ScrapeMetrics = Callable[[httpx.AsyncClient], Awaitable[MetricSamples]]


@pytest.fixture
def scrape_metrics() -> ScrapeMetrics:
    """``await scrape_metrics(http)``: the samples on ``/metrics`` of the service ``http`` talks to."""

    async def scrape(http: httpx.AsyncClient) -> MetricSamples:
        r = await http.get("/metrics")
        assert r.status_code == 200, r.text
        return MetricSamples(
            ((s.name, tuple(sorted(s.labels.items()))), s.value)
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        )

    return scrape
