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


#: Folders at the root of this machine: a path under one of them is a machine path, not a route.
TOP_LEVEL = {entry.name for entry in Path("/").iterdir()}


def absolute(value: str) -> bool:
    """Whether ``value`` names a file by its absolute path ("a=/x/y, b=/z" lists of named data sets
    count too). An API route ("/classify") is not one: a machine path starts at one of this machine's
    top-level folders, or is at least three folders deep."""
    for part in value.split(","):
        path = part.split("=", 1)[-1].strip()
        if path.startswith("/") and len(path) > 1:
            components = path.strip("/").split("/")
            if components[0] in TOP_LEVEL or len(components) >= 3:
                return True
    return False


def test_a_path_is_told_from_a_route() -> None:
    assert absolute("/work/main/data/trashnet.tar.gz")
    assert absolute("upload=/srv/x/y/upload.zip, photos=/data/photos")
    assert absolute("/tmp")
    assert not absolute("/classify")
    assert not absolute("/explain/batch")
    assert not absolute("data/trashnet-112.tar.gz")


def test_there_are_records_to_check() -> None:
    assert len(RECORDS) > 20


@pytest.mark.parametrize("path", RECORDS, ids=lambda path: str(path.relative_to(ROOT)))
def test_a_record_holds_no_absolute_path(path: Path) -> None:
    found = [value for value in strings(json.loads(path.read_text())) if absolute(value)]
    assert found == []


def test_the_shipped_checkpoint_spec_holds_no_absolute_path() -> None:
    spec = load_checkpoint(ROOT / "weights" / "se_resnet50" / "model.pt").spec
    assert [value for value in strings(spec.to_dict()) if absolute(value)] == []
