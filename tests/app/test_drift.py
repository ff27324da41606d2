"""The recent share of unsure answers, by reason, for alerts on a camera that drifts."""

from app.drift import RecentAnswers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_shares_count_only_the_answers_of_the_window() -> None:
    clock = Clock()
    recent = RecentAnswers(60.0, ("low confidence", "unlike the training photos"), clock=clock)
    assert recent.shares() == (0, {"low confidence": 0.0, "unlike the training photos": 0.0, "any": 0.0})
    recent.add(["unlike the training photos"])
    recent.add(["low confidence", "unlike the training photos"])
    clock.now += 30
    recent.add([])
    recent.add([])
    total, shares = recent.shares()
    assert total == 4
    assert shares == {"low confidence": 0.25, "unlike the training photos": 0.5, "any": 0.5}
    # A minute later the first two have left the window: the camera is back to normal.
    clock.now += 31
    total, shares = recent.shares()
    assert total == 2
    assert shares["unlike the training photos"] == 0.0
