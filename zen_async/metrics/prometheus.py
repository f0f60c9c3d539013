"""An in-process metric registry rendered in the Prometheus text format 0.0.4.

Written here rather than taken from ``prometheus_client``: the format is small (HELP, TYPE,
samples, three escapes), the registry must be owned by one ``Metrics`` instance rather than
the process-global default registry, and ``*_ms`` series must be shown in seconds, which
``prometheus_client`` would need wrapping for anyway. It is not thread-safe: use it from the
event loop.

Exposition names: a counter is shown with the ``_total`` suffix, and a series recorded in
milliseconds (``<stem>_ms``) is shown in seconds as ``<stem>_seconds``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Final

import structlog

from zen_async.errors import ValidationError
from zen_async.metrics.names import Kind, MetricSpec, Tags

__all__ = ["CONTENT_TYPE", "MAX_FAMILIES", "MAX_LABEL_SETS", "Family", "Registry", "exposed_name"]

log = structlog.get_logger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The Content-Type to serve :meth:`Registry.render` with."""
MAX_FAMILIES: Final = 1000
"""Distinct metric names one registry accepts: names are a fixed vocabulary, ids go in tags."""
MAX_LABEL_SETS: Final = 500
"""Label sets one family keeps; further ones are left out of the exposition (and logged).
Prometheus wants low cardinality: per-agent ids belong in the Redis series, not here."""


def exposed_name(name: str, kind: Kind) -> tuple[str, float]:
    """The Prometheus name of series ``name`` and the divisor from recorded to exposed units."""
    if name.endswith("_ms"):
        name, divisor = name[: -len("_ms")] + "_seconds", 1000.0
    else:
        divisor = 1.0
    if kind == "counter" and not name.endswith("_total"):
        name += "_total"
    return name, divisor


@dataclass(slots=True)
class _Histogram:
    counts: list[int]
    total: float = 0.0
    count: int = 0


@dataclass(slots=True, eq=False)
class Family:
    """One metric family: every label set of one name."""

    spec: MetricSpec
    name: str
    divisor: float
    bounds: tuple[float, ...]
    """Bucket upper bounds in recorded units (histograms only)."""
    values: dict[Tags, float] = field(default_factory=dict)
    histograms: dict[Tags, _Histogram] = field(default_factory=dict)
    overflow: int = 0

    @property
    def kind(self) -> Kind:
        """counter, gauge or histogram."""
        return self.spec.kind

    def _admit(self, labels: Tags) -> bool:
        if len(self.values) + len(self.histograms) < MAX_LABEL_SETS:
            return True
        self.overflow += 1
        if self.overflow == 1:
            log.warning("metrics_label_sets_exhausted", metric=self.name, limit=MAX_LABEL_SETS)
        return False

    def inc(self, labels: Tags, amount: float) -> None:
        """Add ``amount`` (>= 0) to a counter."""
        if labels in self.values or self._admit(labels):
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def set(self, labels: Tags, value: float) -> None:
        """Set a gauge."""
        if labels in self.values or self._admit(labels):
            self.values[labels] = value

    def observe(self, labels: Tags, value: float) -> None:
        """Observe one value into a histogram."""
        hist = self.histograms.get(labels)
        if hist is None:
            if not self._admit(labels):
                return
            hist = self.histograms[labels] = _Histogram([0] * (len(self.bounds) + 1))
        hist.counts[bisect.bisect_left(self.bounds, value)] += 1
        hist.total += value
        hist.count += 1

    def samples(self) -> list[tuple[str, str, float]]:
        """(sample name, rendered labels, value) for every sample, in exposition order."""
        out: list[tuple[str, str, float]] = []
        divisor = self.divisor
        if self.kind != "histogram":
            for labels in sorted(self.values):
                out.append((self.name, _labels(labels), self.values[labels] / divisor))
            return out
        for labels in sorted(self.histograms):
            hist = self.histograms[labels]
            cumulative = 0
            for bound, n in zip((*self.bounds, math.inf), hist.counts, strict=True):
                cumulative += n
                le = ("le", _number(bound / divisor))
                out.append((f"{self.name}_bucket", _labels((*labels, le)), float(cumulative)))
            out.append((f"{self.name}_sum", _labels(labels), hist.total / divisor))
            out.append((f"{self.name}_count", _labels(labels), float(hist.count)))
        return out


class Registry:
    """Counters, gauges and histograms of one process, rendered for a Prometheus scrape."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}  # by series name
        self._taken: dict[str, str] = {}  # exposition sample name -> series name

    def declare(self, spec: MetricSpec) -> Family:
        """The family of ``spec.name``, created on first use.

        Raises:
            ValidationError: the name is already declared with another kind, its exposition
                would clash with another family's, or the registry holds MAX_FAMILIES names.
        """
        family = self._families.get(spec.name)
        if family is not None:
            if family.kind != spec.kind:
                raise ValidationError(
                    f"metric {spec.name!r} is a {family.kind}; record it as one "
                    f"({_HOW[family.kind]}) or pick another name for the {spec.kind}"
                )
            return family
        if len(self._families) >= MAX_FAMILIES:
            raise ValidationError(
                f"more than {MAX_FAMILIES} distinct metric names: names are a fixed "
                "vocabulary; put variable parts (ids, paths) in tags"
            )
        name, divisor = exposed_name(spec.name, spec.kind)
        suffixes = ("_bucket", "_sum", "_count", "") if spec.kind == "histogram" else ("",)
        sample_names = [name + suffix for suffix in suffixes]
        for sample in sample_names:
            other = self._taken.get(sample)
            if other is not None:
                raise ValidationError(
                    f"metric {spec.name!r} would be exposed as {sample!r}, which {other!r} "
                    "already uses; pick another name"
                )
        for sample in sample_names:
            self._taken[sample] = spec.name
        family = Family(spec, name, divisor, tuple(sorted(spec.buckets)))
        self._families[spec.name] = family
        return family

    def get(self, name: str) -> Family | None:
        """The family of series ``name``, if declared."""
        return self._families.get(name)

    def sample_names(self) -> set[str]:
        """Every sample name the exposition may contain."""
        return set(self._taken)

    def render(self) -> str:
        """The exposition: HELP and TYPE lines, then samples, family by family."""
        lines: list[str] = []
        for family in sorted(self._families.values(), key=lambda f: f.name):
            lines.append(f"# HELP {family.name} {_escape_help(family.spec.help)}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            lines.extend(
                f"{sample}{labels} {_number(value)}" for sample, labels, value in family.samples()
            )
        return "\n".join(lines) + "\n" if lines else ""


_HOW: Final[dict[str, str]] = {
    "counter": "Metrics.count()",
    "gauge": "Metrics.gauge()",
    "histogram": "Metrics.record_metric() or Metrics.time()",
}


def _labels(labels: Tags) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
