"""A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text format 0.0.4.

Thread-safe (one lock). No prometheus_client dependency: the text format is a few lines of code.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}" if labels else ""


def _num(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


@dataclass
class _Family:
    kind: str  # counter | gauge | histogram
    help: str  # one line
    buckets: tuple[float, ...] = ()  # histogram upper bounds (without +Inf)
    values: dict = field(default_factory=dict)  # labels -> value, or -> [bucket counts, sum, count]


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    def declare(self, name: str, kind: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        with self._lock:
            self._families.setdefault(name, _Family(kind, help, tuple(buckets) if kind == "histogram" else ()))

    def _family(self, name: str, kind: str) -> _Family:
        fam = self._families.get(name)
        if fam is None or fam.kind != kind:
            raise KeyError(f"metric {name!r} is not declared as a {kind}")
        return fam

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            fam = self._family(name, "counter")
            fam.values[key] = fam.values.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._family(name, "gauge").values[key] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            fam = self._family(name, "histogram")
            slot = fam.values.setdefault(key, [[0] * len(fam.buckets), 0.0, 0])
            i = bisect_left(fam.buckets, value)
            if i < len(fam.buckets):
                slot[0][i] += 1
            slot[1] += value
            slot[2] += 1

    def value(self, name: str, **labels: str) -> float | None:
        """A counter's or gauge's current value (for tests and the JSON health view)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            fam = self._families.get(name)
            v = None if fam is None else fam.values.get(key)
        return v if not isinstance(v, list) else v[2]

    def render(self, extra: list[tuple[str, str, str, list[tuple[dict, float]]]] = ()) -> str:
        """The registry plus `extra` families [(name, kind, help, [(labels, value)])] collected at scrape time."""
        lines: list[str] = []
        with self._lock:
            fams = {k: (f.kind, f.help, f.buckets, dict(f.values)) for k, f in self._families.items()}
        for name, kind, help_, samples in extra:
            fams[name] = (kind, help_, (), {tuple(sorted((k, str(v)) for k, v in lab.items())): val
                                            for lab, val in samples})
        for name in sorted(fams):
            kind, help_, buckets, values = fams[name]
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for key in sorted(values):
                v = values[key]
                if kind != "histogram":
                    lines.append(f"{name}{_labels(key)} {_num(v)}")
                    continue
                counts, total, n = v
                running = 0
                for bound, c in zip(buckets, counts):
                    running += c
                    lines.append(f"{name}_bucket{_labels(key + (('le', _num(bound)),))} {running}")
                lines.append(f"{name}_bucket{_labels(key + (('le', '+Inf'),))} {n}")
                lines.append(f"{name}_sum{_labels(key)} {_num(total)}")
                lines.append(f"{name}_count{_labels(key)} {n}")
        return "\n".join(lines) + "\n"
