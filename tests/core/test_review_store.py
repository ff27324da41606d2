"""The review queue's records: create, list, label, relabel, prune, export as a data set."""

from pathlib import Path

import pytest

from core.review import (
    AlreadyLabelledError,
    NewItem,
    ReviewError,
    ReviewItemNotFoundError,
    ReviewStore,
)

CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def new_item(confidence: float, *, site: str | None = "sd", reasons: tuple[str, ...] = ()) -> NewItem:
    rest = (1 - confidence) / 5
    return NewItem(
        site=site,
        model="se_resnet50:builtin",
        model_sha256="abc",
        classes=CLASSES,
        probabilities=[confidence, rest, rest, rest, rest, rest],
        energy=-5.0,
        distance=0.3,
        unsure=bool(reasons),
        reasons=reasons,
        filename="photo.jpg",
    )


@pytest.fixture
def store(tmp_path: Path) -> ReviewStore:
    return ReviewStore(tmp_path / "review")


def test_items_are_listed_pending_oldest_or_least_sure_first_and_filtered(store: ReviewStore) -> None:
    first = store.add(b"jpeg-1", new_item(0.9), now=100.0)
    second = store.add(b"jpeg-2", new_item(0.4, reasons=("low confidence",)), now=200.0)
    third = store.add(b"jpeg-3", new_item(0.6, site="er", reasons=("unlike the training photos",)), now=300.0)
    assert first.predicted == "cardboard"
    assert first.confidence == pytest.approx(0.9)
    assert store.photo_path(first.id).read_bytes() == b"jpeg-1"
    items, total = store.find()
    assert ([i.id for i in items], total) == ([first.id, second.id, third.id], 3)
    items, _ = store.find(order="least_sure")
    assert [i.id for i in items] == [second.id, third.id, first.id]
    assert [i.id for i in store.find(site="er")[0]] == [third.id]
    assert [i.id for i in store.find(reason="low confidence")[0]] == [second.id]
    assert store.find(model="other:v1") == ([], 0)
    page, total = store.find(limit=1, offset=1)
    assert ([i.id for i in page], total) == ([second.id], 3)
    store.label(second.id, "glass", by="ana")
    assert [i.id for i in store.find()[0]] == [first.id, third.id]
    assert [i.id for i in store.find(state="labelled")[0]] == [second.id]


def test_a_label_is_never_overwritten_silently(store: ReviewStore) -> None:
    item = store.add(b"jpeg", new_item(0.5))
    store.label(item.id, "glass", by="ana", now=10.0)
    with pytest.raises(AlreadyLabelledError, match="already labelled 'glass' by ana"):
        store.label(item.id, "metal", by="ben")
    relabelled = store.label(item.id, "metal", by="ben", relabel=True, now=20.0)
    assert [(lab.label, lab.by) for lab in relabelled.labels] == [("glass", "ana"), ("metal", "ben")]
    assert relabelled.label == "metal"


def test_unknown_labels_and_missing_items_are_refused(store: ReviewStore) -> None:
    item = store.add(b"jpeg", new_item(0.5))
    with pytest.raises(ReviewError, match="'battery' is not one of cardboard, glass"):
        store.label(item.id, "battery", by="ana")
    assert store.label(item.id, "not waste", by="ana").label == "not waste"
    with pytest.raises(ReviewItemNotFoundError):
        store.label("nope", "glass", by="ana")
    with pytest.raises(ReviewItemNotFoundError):
        store.get("nope")


def test_pruning_removes_old_items_their_photos_and_labels(store: ReviewStore) -> None:
    old = store.add(b"old", new_item(0.5), now=1000.0)
    store.label(old.id, "glass", by="ana")
    recent = store.add(b"new", new_item(0.5), now=5000.0)
    assert store.prune(3000.0, now=6000.0) == 1
    with pytest.raises(ReviewItemNotFoundError):
        store.get(old.id)
    assert not store.photo_path(old.id).exists()
    with pytest.raises(ReviewItemNotFoundError, match="pruned"):
        store.label(old.id, "metal", by="ana", relabel=True)
    assert store.get(recent.id).id == recent.id


def test_a_site_review_set_exports_as_an_image_folder_with_its_lineage(
    store: ReviewStore, tmp_path: Path
) -> None:
    labels = ["glass", "glass", "metal", "skip", "not waste"]
    items = [store.add(f"jpeg-{i}".encode(), new_item(0.5)) for i in range(len(labels))]
    for item, label in zip(items, labels, strict=True):
        store.label(item.id, label, by="ana", now=100.0 + len(label))
    other_site = store.add(b"er", new_item(0.5, site="er"))
    store.label(other_site.id, "paper", by="ben")
    exported = store.export("sd", tmp_path / "set")
    assert exported.counts == {"glass": 2, "metal": 1}
    assert sorted(p.name for p in (tmp_path / "set" / "glass").iterdir()) == sorted(
        f"{i.id}.jpg" for i in items[:2]
    )
    assert (tmp_path / "set" / "metal" / f"{items[2].id}.jpg").read_bytes() == b"jpeg-2"
    lineage = exported.lineage
    assert (lineage["site"], lineage["labels"], lineage["by"]) == ("sd", 3, ["ana"])
    assert lineage["up_to"] == 105.0


def test_a_review_set_without_photos_or_with_one_class_is_refused(store: ReviewStore, tmp_path: Path) -> None:
    with pytest.raises(ReviewError, match="no photo labelled with a class"):
        store.export("sd", tmp_path / "none")
    item = store.add(b"jpeg", new_item(0.5))
    store.label(item.id, "glass", by="ana")
    with pytest.raises(ReviewError, match="one class only"):
        store.export("sd", tmp_path / "one")


def test_records_survive_a_new_store_on_the_same_folder(tmp_path: Path) -> None:
    item = ReviewStore(tmp_path / "review").add(b"jpeg", new_item(0.5))
    ReviewStore(tmp_path / "review").label(item.id, "paper", by="ana")
    assert ReviewStore(tmp_path / "review").get(item.id).label == "paper"


def test_a_skipped_item_waits_apart_and_takes_its_next_label_without_relabel(store: ReviewStore) -> None:
    item = store.add(b"jpeg", new_item(0.5))
    store.label(item.id, "skip", by="ana")
    assert store.find() == ([], 0)
    assert [i.id for i in store.find(state="skipped")[0]] == [item.id]
    labelled = store.label(item.id, "glass", by="ben")
    assert [lab.label for lab in labelled.labels] == ["skip", "glass"]
    assert store.find(state="skipped") == ([], 0)
    assert [i.id for i in store.find(state="labelled")[0]] == [item.id]
