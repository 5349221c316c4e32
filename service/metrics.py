"""Prometheus metrics of one app, in a registry of its own (tests build many apps in one process; the global
registry would refuse the second): requests and latency per route template and status, inference batch sizes,
and, read at scrape time, gallery size and what the server runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import version

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from genreid.service.dependencies import Services
from genreid.service.store import GalleryError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceCollector(Collector):
    """What the lifespan opened, read at each scrape: store.counts() is an in-memory count on the embedded store
    (one query on Milvus); an unavailable store leaves the gallery gauges out of that scrape, not the scrape."""

    def __init__(self) -> None:
        self.services: Services | None = None

    def collect(self) -> Iterator[Metric]:
        services = self.services
        if services is None:
            return
        encoders = services.encoders
        yield InfoMetricFamily("genreid_model", "the served model, its precision per network, the gallery backend",
                               value={"model_id": encoders.metadata.model_id or "",
                                      "precision": ",".join(f"{name}={kind}"
                                                            for name, kind in encoders.precision.items()),
                                      "gallery_backend": services.gallery.backend,
                                      "version": version("genreid")})
        try:
            entries, persons = services.gallery.counts()
        except GalleryError as err:
            log.warning("metrics: gallery counts unavailable: %s", err)
            return
        yield GaugeMetricFamily("genreid_gallery_entries", "entries (enrolled crops) in the gallery", value=entries)
        yield GaugeMetricFamily("genreid_gallery_persons", "distinct person ids in the gallery", value=persons)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter("genreid_http_requests", "HTTP requests answered, by route template and status",
                                labels, registry=self.registry)
        self.latency = Histogram("genreid_http_request_duration_seconds", "time to answer a request, in seconds",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_sizes = Histogram("genreid_inference_batch_size", "images per ONNX Runtime run, after "
                                     "concurrent requests were coalesced", ("network",), buckets=BATCH_BUCKETS,
                                     registry=self.registry)
        self._service = ServiceCollector()
        self.registry.register(self._service)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def observe_batch(self, network: str, size: int) -> None:
        self.batch_sizes.labels(network).observe(size)

    def watch(self, services: Services) -> None:
        """Start reading the services the lifespan opened."""
        self._service.services = services
        services.encoders.observe_batches(self.observe_batch)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
