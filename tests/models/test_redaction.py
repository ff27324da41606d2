import pytest

from models.files import redact, redact_paths

LABELS = {
    "/srv/var/data": "<data root>",
    "/srv/var/jobs": "<jobs>",
    "/srv/var": "<var>",
    "/opt/trashcam": "",
}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("/srv/var/jobs/abc/upload.zip: not an archive", "<jobs>/abc/upload.zip: not an archive"),
        ("/srv/var/data/site-a/photos.tar.gz", "<data root>/site-a/photos.tar.gz"),
        ("/opt/trashcam/weights/se_resnet50/model.pt", "weights/se_resnet50/model.pt"),
        ("a=/home/bob/sets/extra.tar.gz, b=/tmp/x.zip", "a=extra.tar.gz, b=x.zip"),
        ("/srv/variable/x.pt", "x.pt"),  # a sibling of a known folder is not inside it
        ("/opt/trashcam", "."),
        ("data/trashnet-112.tar.gz and 1/2 of a/b/c", "data/trashnet-112.tar.gz and 1/2 of a/b/c"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_server_folders_are_named_by_label_or_left_out(text: str, shown: str) -> None:
    assert redact_paths(text, LABELS) == shown


def test_every_string_of_a_record_is_redacted() -> None:
    record = {"data": ["/srv/var/data/a.zip"], "nested": {"path": "/home/x/y.pt", "seed": 3}}
    assert redact(record, LABELS) == {"data": ["<data root>/a.zip"], "nested": {"path": "y.pt", "seed": 3}}


def test_a_label_is_taken_as_it_is_escapes_and_all() -> None:
    """A client's file name as a label: a backslash in it is no pattern escape (an error before)."""
    label = r"photos\1\g<0>.zip"
    assert redact_paths("/srv/var/jobs/abc/upload.zip: bad", {"/srv/var/jobs/abc/upload.zip": label}) == (
        f"{label}: bad"
    )
