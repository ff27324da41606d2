"""The share of recent answers that were unsure, by reason: what an operator alerts on when a camera's
photos drift away from what the model knows ("this site needs fine-tuning"). Counters since start-up
cannot show it: a week of good answers hides an afternoon of bad ones."""

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class RecentAnswers:
    """Answers of the last ``window_seconds``, counted per second with their unsure reasons: memory
    bounded by the window, not by how many answers it holds."""

    def __init__(
        self,
        window_seconds: float,
        reasons: Sequence[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self.reasons = tuple(reasons)
        self.clock = clock
        # (second, answers, answers unsure for any reason, answers per reason), oldest first.
        self._seconds: deque[tuple[int, int, int, Counter[str]]] = deque()
        self._lock = threading.Lock()

    def _drop_old(self) -> None:
        cutoff = self.clock() - self.window_seconds
        while self._seconds and self._seconds[0][0] < cutoff:
            self._seconds.popleft()

    def add(self, reasons: Iterable[str]) -> None:
        given = set(reasons)
        with self._lock:
            second = int(self.clock())
            if self._seconds and self._seconds[-1][0] == second:
                _, total, unsure, per_reason = self._seconds.pop()
            else:
                total, unsure, per_reason = 0, 0, Counter()
            per_reason.update(given)
            self._seconds.append((second, total + 1, unsure + bool(given), per_reason))
            self._drop_old()

    def shares(self) -> tuple[int, dict[str, float]]:
        """How many answers the window holds, and the share of them unsure for each reason and for any
        (``"any"``); 0 when it holds none."""
        with self._lock:
            self._drop_old()
            total = sum(entry[1] for entry in self._seconds)
            unsure = sum(entry[2] for entry in self._seconds)
            per_reason: Counter[str] = Counter()
            for entry in self._seconds:
                per_reason.update(entry[3])
        shares = {reason: per_reason[reason] / total if total else 0.0 for reason in self.reasons}
        shares["any"] = unsure / total if total else 0.0
        return total, shares


class RecentAnswersCollector(Collector):
    """Exposes :class:`RecentAnswers` as gauges, computed when scraped."""

    def __init__(self, recent: RecentAnswers) -> None:
        self.recent = recent

    def collect(self) -> Iterable[GaugeMetricFamily]:
        total, shares = self.recent.shares()
        window = f"the last {self.recent.window_seconds:g} s"
        answers = GaugeMetricFamily("trashcam_recent_answers", f"photos answered in {window}")
        answers.add_metric([], total)
        share = GaugeMetricFamily(
            "trashcam_recent_unsure_share",
            f"share of the photos answered in {window} that were unsure, by reason ('any': for any)",
            labels=["reason"],
        )
        for reason, value in shares.items():
            share.add_metric([reason], value)
        yield answers
        yield share
