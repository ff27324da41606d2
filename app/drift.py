"""The share of recent answers that were unsure, by reason: what an operator alerts on when a camera's
photos drift away from what the model knows ("this site needs fine-tuning"). Counters since start-up
cannot show it: a week of good answers hides an afternoon of bad ones."""

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class RecentAnswers:
    """Answers of the last ``window_seconds`` (at most ``max_answers`` of them), with their unsure
    reasons."""

    def __init__(
        self,
        window_seconds: float,
        reasons: Sequence[str],
        *,
        max_answers: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self.reasons = tuple(reasons)
        self.clock = clock
        self._answers: deque[tuple[float, frozenset[str]]] = deque(maxlen=max_answers)
        self._lock = threading.Lock()

    def add(self, reasons: Iterable[str]) -> None:
        with self._lock:
            self._answers.append((self.clock(), frozenset(reasons)))

    def shares(self) -> tuple[int, dict[str, float]]:
        """How many answers the window holds, and the share of them unsure for each reason and for any
        (``"any"``); 0 when it holds none."""
        with self._lock:
            cutoff = self.clock() - self.window_seconds
            while self._answers and self._answers[0][0] < cutoff:
                self._answers.popleft()
            answers = [reasons for _, reasons in self._answers]
        total = len(answers)
        shares = {
            reason: sum(reason in given for given in answers) / total if total else 0.0
            for reason in self.reasons
        }
        shares["any"] = sum(bool(given) for given in answers) / total if total else 0.0
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
