"""A form keeps only the last value of a repeated field: the service must not drop the others silently."""

from fastapi.testclient import TestClient

from tests.app.conftest import API_KEY, png_bytes


def test_file_given_twice_to_classify_classifies_both(client: TestClient) -> None:
    parts = [
        ("file", ("a.png", png_bytes(), "image/png")),
        ("file", ("b.png", png_bytes((20, 20)), "image/png")),
    ]
    response = client.post("/classify", files=parts)
    assert response.status_code == 200, response.text
    assert [result["filename"] for result in response.json()["results"]] == ["a.png", "b.png"]


def test_file_and_files_together_are_all_classified(client: TestClient) -> None:
    parts = [("file", ("a.png", png_bytes(), "image/png")), ("files", ("b.png", png_bytes(), "image/png"))]
    assert len(client.post("/classify", files=parts).json()["results"]) == 2


def test_a_single_photo_route_refuses_two(client: TestClient) -> None:
    parts = [("file", ("a.png", png_bytes(), "image/png")), ("file", ("b.png", png_bytes(), "image/png"))]
    for route in ("/explain", "/fingerprint", "/similar"):
        response = client.post(route, files=parts)
        assert response.status_code == 422, route
        assert "'file' was sent 2 times" in response.json()["detail"]


def test_train_refuses_a_second_archive_or_name(client: TestClient) -> None:
    parts = [("file", ("a.zip", b"PK\x05\x06" + bytes(18), "application/zip"))] * 2
    response = client.post("/train", files=parts, headers={"X-API-Key": API_KEY})
    assert response.status_code == 422
    assert "'file' was sent 2 times" in response.json()["detail"]
    named = client.post(
        "/train",
        files=[("file", ("a.zip", b"PK\x05\x06" + bytes(18), "application/zip"))],
        data={"name": ["one", "two"]},
        headers={"X-API-Key": API_KEY},
    )
    assert named.status_code == 422
    assert "'name' was sent 2 times" in named.json()["detail"]
