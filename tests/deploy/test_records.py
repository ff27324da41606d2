"""The records the project ships (docs/, weights/) name files relative to the project, never by the
absolute paths of the machine that made them."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
RECORDS = sorted(path for folder in ("docs", "weights") for path in (ROOT / folder).rglob("*.json"))


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def absolute(value: str) -> bool:
    # "a=/x/y, b=/z" lists of named data sets count too.
    return any(part.split("=", 1)[-1].strip().startswith("/") for part in value.split(","))


def test_there_are_records_to_check() -> None:
    assert len(RECORDS) > 20


@pytest.mark.parametrize("path", RECORDS, ids=lambda path: str(path.relative_to(ROOT)))
def test_a_record_holds_no_absolute_path(path: Path) -> None:
    found = [value for value in strings(json.loads(path.read_text())) if absolute(value)]
    assert found == []


def test_the_shipped_checkpoint_spec_holds_no_absolute_path() -> None:
    spec = load_checkpoint(ROOT / "weights" / "se_resnet50" / "model.pt").spec
    assert [value for value in strings(spec.to_dict()) if absolute(value)] == []
