"""What `GET /metrics` reports, counted cheaply on the hot path, exposed by prometheus-client.

The server counts with plain integers (a dict lookup and an add per request; a
prometheus-client counter takes a lock per increment, which cost more than the 5 % of
validations/s we allow metrics). At scrape time a custom collector turns the counts
into prometheus-client metric families, and the library writes the exposition format,
so the text is the library's, not ours. prometheus-client is imported only then.

Label values are route templates, methods, statuses and verdicts: never a path, an ID
or a secret.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

# Seconds; what a request on loopback takes runs from tens of microseconds up.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Bucket counts and a sum, as a Prometheus histogram holds them."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count: int = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (upper bound, count) pairs, ending with +Inf."""
        running = 0
        out = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class Counters:
    """Every count /metrics reports. Written by the event loop and the workers; the GIL
    makes each += safe enough for counters (a lost increment under a race is tolerable,
    a lock per request is not)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.issued = 0
        self.purged = 0
        self.durations = Histogram(DURATION_BUCKETS)
        self.batches = Histogram(BATCH_BUCKETS)
        self.open_connections = 0

    def count_verdict(self, verdict: str) -> None:
        """One validation answered with this verdict."""
        self.verdicts[verdict] += 1

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request answered; `route` is its template."""
        self.requests[(route, method, status)] += 1
        self.durations.observe(seconds)


class _Collector:
    """A prometheus-client collector reading Counters at scrape time."""

    def __init__(self, counters: Counters, gauges: Callable[[], dict[str, float]]) -> None:
        self._counters = counters
        self._gauges = gauges

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        counts = self._counters
        requests = CounterMetricFamily(
            "tokencli_http_requests",
            "HTTP requests answered, by route template, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), value in sorted(counts.requests.copy().items()):
            requests.add_metric([route, method, str(status)], value)
        yield requests
        verdicts = CounterMetricFamily(
            "tokencli_validations", "Token validations, by verdict.", labels=["verdict"]
        )
        for verdict, value in sorted(counts.verdicts.copy().items()):
            verdicts.add_metric([verdict], value)
        yield verdicts
        yield CounterMetricFamily("tokencli_tokens_issued", "Tokens issued.", value=counts.issued)
        yield CounterMetricFamily("tokencli_tokens_purged", "Tokens purged.", value=counts.purged)
        yield HistogramMetricFamily(
            "tokencli_http_request_duration_seconds",
            "From a request's first byte to its answer being queued.",
            buckets=counts.durations.buckets(),
            sum_value=counts.durations.total,
        )
        yield HistogramMetricFamily(
            "tokencli_batch_size",
            "Requests answered per transaction (group commit).",
            buckets=counts.batches.buckets(),
            sum_value=counts.batches.total,
        )
        yield GaugeMetricFamily(
            "tokencli_open_connections", "Client connections open.", value=counts.open_connections
        )
        for name, figure in sorted(self._gauges().items()):
            if name.endswith("_total"):  # a count that only grows: a counter, not a gauge
                counted = name.removesuffix("_total")
                yield CounterMetricFamily(
                    f"tokencli_store_{counted}", f"Store count {counted}.", value=figure
                )
            else:
                yield GaugeMetricFamily(
                    f"tokencli_store_{name}", f"Store figure {name}.", value=figure
                )


class Exposition:
    """Renders the counters in Prometheus' text format through prometheus-client."""

    def __init__(self, counters: Counters, gauges: Callable[[], dict[str, float]]) -> None:
        from prometheus_client import CollectorRegistry

        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(counters, gauges))
        self._lock = threading.Lock()

    def render(self) -> bytes:
        """The page /metrics serves."""
        from prometheus_client import generate_latest

        with self._lock:
            return generate_latest(self._registry)
