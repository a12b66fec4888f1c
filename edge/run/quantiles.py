"""Latency percentiles of an endless stream in fixed memory: a log-bucketed histogram.

The idea is DDSketch's (Masson, Rim, Lee, VLDB 2019): a positive value x falls in bucket
``ceil(log_gamma(x))`` with ``gamma = (1 + a) / (1 - a)``, and every value of a bucket is
represented by one number within a relative error ``a`` of all of them. So any quantile is known to
within ``a`` (1 % by default) of the exact one (the sorted values' ``floor(q (n - 1))``-th), with
one counter per bucket: about 1,000 integers cover 1 us to 1000 s, whatever the stream's length.
"""

from __future__ import annotations

import math

import numpy as np


class LogHistogram:
    """Streaming quantiles with relative error at most ``accuracy``.

    Args:
        accuracy: the relative error bound of every quantile (0.01: 1 %).
        low: the smallest value told apart (smaller positive values count as ``low``).
        high: the largest value told apart (larger values count as ``high``).
    """

    def __init__(self, accuracy: float = 0.01, low: float = 1e-3, high: float = 1e6):
        if not 0.0 < accuracy < 1.0:
            raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
        if not 0.0 < low < high:
            raise ValueError(f"need 0 < low < high, got {low}, {high}")
        self.accuracy = accuracy
        self._log_gamma = math.log((1.0 + accuracy) / (1.0 - accuracy))
        self._offset = math.ceil(math.log(low) / self._log_gamma)
        self._buckets = np.zeros(
            math.ceil(math.log(high) / self._log_gamma) - self._offset + 1, np.int64
        )
        self.zeros = 0  # values <= 0
        self.count = 0
        self.total = 0.0
        self._squares = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Count one value."""
        self.count += 1
        self.total += value
        self._squares += value * value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if value <= 0.0:
            self.zeros += 1
            return
        k = math.ceil(math.log(value) / self._log_gamma) - self._offset
        self._buckets[min(max(k, 0), len(self._buckets) - 1)] += 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation (exact, from the running sums)."""
        if not self.count:
            return math.nan
        return math.sqrt(max(0.0, self._squares / self.count - self.mean**2))

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1), within ``accuracy`` of the exact one; NaN when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if not self.count:
            return math.nan
        rank = q * (self.count - 1)
        if rank < self.zeros:
            return min(0.0, self.max)
        cumulative = np.cumsum(self._buckets)
        k = int(np.searchsorted(cumulative, rank - self.zeros, side="right"))
        k = min(k, len(self._buckets) - 1)
        gamma = math.exp(self._log_gamma)
        estimate = 2.0 * gamma ** (k + self._offset) / (gamma + 1.0)
        return float(min(max(estimate, self.min), self.max))

    def summary(self, digits: int = 3, full: bool = False) -> dict:
        """mean, p50, p90, p99 and max, rounded; with ``full`` also count, std and min (as
        TFLite's benchmark_model reports them). NaN-free: an empty histogram gives {}."""
        if not self.count:
            return {}
        values = {
            "mean": self.mean,
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "max": self.max,
        }
        if full:
            values = {"count": self.count, "std": self.std, "min": self.min, **values}
        return {k: v if isinstance(v, int) else round(v, digits) for k, v in values.items()}

    @classmethod
    def of(cls, values, accuracy: float = 0.01) -> LogHistogram:
        """A histogram of a finite sequence of values."""
        hist = cls(accuracy)
        for value in values:
            hist.add(float(value))
        return hist
