"""Prometheus text exposition (format 0.0.4), written by hand: counters, gauges and histograms.

Only what the server needs; every update takes one lock, so the event loop and the scoring thread
may both record.
"""
from __future__ import annotations

import math
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _label_text(labels: tuple) -> str:
    if not labels:
        return ""
    escaped = (str(v).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"") for _, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, escaped)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Family:
    def __init__(self, name: str, kind: str, help_text: str):
        self.name, self.kind, self.help = name, kind, help_text

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Family):
    def __init__(self, name, help_text, lock):
        super().__init__(name, "counter", help_text)
        self._values: dict[tuple, float] = {}
        self._lock = lock

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def lines(self) -> list[str]:
        return self.header() + [f"{self.name}{_label_text(k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Family):
    def __init__(self, name, help_text, lock, read=None):
        super().__init__(name, "gauge", help_text)
        self._value, self._read, self._lock = 0.0, read, lock

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def lines(self) -> list[str]:
        value = self._read() if self._read is not None else self._value
        return self.header() + [f"{self.name} {_number(value)}"]


class Histogram(_Family):
    def __init__(self, name, help_text, lock, buckets):
        super().__init__(name, "histogram", help_text)
        self.bounds = tuple(buckets) + (math.inf,)
        self._counts = [0] * len(self.bounds)  # per bucket (not cumulative) until rendered
        self._sum, self._count, self._lock = 0.0, 0, lock

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            self._count += 1
            self._counts[next(i for i, b in enumerate(self.bounds) if value <= b)] += 1

    def lines(self) -> list[str]:
        out, running = self.header(), 0
        for bound, count in zip(self.bounds, self._counts):
            running += count
            out.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        return out + [f"{self.name}_sum {_number(self._sum)}", f"{self.name}_count {self._count}"]


class Metrics:
    """The server's metrics; `render()` is the /metrics body."""

    def __init__(self, queue_depth=lambda: 0, admission=None):
        lock = threading.RLock()
        self._lock = lock
        self.requests = Counter("dgsnet_requests_total", "HTTP requests answered, by route and status.", lock)
        self.errors = Counter("dgsnet_errors_total", "Refused requests and failed images, by kind.", lock)
        self.images = Counter("dgsnet_images_total", "Images received, by outcome (scored or error).", lock)
        self.latency = Histogram("dgsnet_request_duration_seconds", "Time to answer POST /v1/detect.", lock,
                                 LATENCY_BUCKETS)
        self.batch_size = Histogram("dgsnet_batch_size", "Images per batch run through the model.", lock,
                                    BATCH_BUCKETS)
        self.queue_depth = Gauge("dgsnet_queue_depth", "Images decoded and not answered yet (queued, or in the batch being gathered or scored).", lock,
                                 read=queue_depth)
        self.ready = Gauge("dgsnet_ready", "1 once the model is loaded and warmed.", lock)
        held = admission  # dgsnet_export.serve.admission.Admission: what the admitted requests hold
        self.decoded = [
            Gauge("dgsnet_decoded_images", "Images admitted and not answered yet (being decoded, queued or "
                  "scored).", lock, read=lambda: held.images if held else 0),
            Gauge("dgsnet_decoded_pixels", "Pixels (width x height, 3 bytes each decoded) of the admitted "
                  "images.", lock, read=lambda: held.pixels if held else 0),
            Gauge("dgsnet_decoded_pixels_peak", "The most dgsnet_decoded_pixels held at once since the start.",
                  lock, read=lambda: held.peak_pixels if held else 0),
            Gauge("dgsnet_decoded_pixels_limit", "The bound on dgsnet_decoded_pixels (--max-decoded-mp).", lock,
                  read=lambda: held.max_pixels if held else 0)]

    def render(self) -> str:
        with self._lock:
            families = (self.requests, self.errors, self.images, self.latency, self.batch_size, self.queue_depth,
                        self.ready, *self.decoded)
            return "\n".join(line for family in families for line in family.lines()) + "\n"
