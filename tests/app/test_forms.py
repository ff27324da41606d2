"""Forms that a route reads itself (``app.forms``) answer as FastAPI's own forms do."""

from fastapi.testclient import TestClient

from tests.app.conftest import png_bytes


def test_a_file_where_text_is_expected_and_text_where_a_file_is_are_422(client: TestClient) -> None:
    photo = ("a.png", png_bytes(), "image/png")
    response = client.post("/classify", files=[("file", photo), ("model", ("m.txt", b"x", "text/plain"))])
    assert response.status_code == 422
    assert response.json()["detail"].startswith("model: Input should be a valid string")
    response = client.post("/classify", data={"file": "not a photo"})
    assert response.status_code == 422
    assert response.json()["detail"] == "file: Value error, Expected UploadFile, received: <class 'str'>"


def test_a_body_that_cannot_be_parsed_is_400(client: TestClient) -> None:
    response = client.post("/classify", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 400
    assert response.json()["detail"] == "Missing boundary in multipart."


def test_text_fields_take_their_last_value_and_files_every_one(client: TestClient) -> None:
    parts = [("files", ("a.png", png_bytes(), "image/png")), ("files", ("b.png", png_bytes(), "image/png"))]
    response = client.post("/classify", files=parts, data={"model": ["nope:1", ""]})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2


def test_the_document_describes_the_form_as_fastapi_would(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    body = document["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"] == {"$ref": "#/components/schemas/Body_classify"}
    fields = document["components"]["schemas"]["Body_classify"]["properties"]
    assert fields["file"] == {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "title": "File",
        "description": "one photo (given several times: each is classified)",
    }
    assert fields["files"]["items"]["contentMediaType"] == "application/octet-stream"
    assert fields["review"]["enum"] == ["off", "unsure", "all"]
    assert set(fields) == {"file", "files", "model", "site", "review"}


def test_an_empty_text_field_takes_its_default_and_a_bad_one_is_named(client: TestClient) -> None:
    photo = {"file": ("a.png", png_bytes(), "image/png")}
    fine = client.post("/explain", files=photo, data={"alpha": "", "target": "", "method": "gradcam"})
    assert fine.status_code == 200, fine.text
    bad = client.post("/explain", files=photo, data={"alpha": "1.5", "colormap": "jet"})
    assert bad.status_code == 422
    assert bad.json()["detail"] == "alpha: Input should be less than or equal to 1"
    missing = client.post("/explain", data={"method": "gradcam"})
    assert missing.status_code == 422
    assert missing.json()["detail"] == "file: Field required"


def test_an_empty_file_list_is_422_and_a_required_file_makes_the_body_required(client: TestClient) -> None:
    response = client.post("/classify", data={"files": ""})
    assert response.status_code == 422
    assert response.json()["detail"] == "files.0: Value error, Expected UploadFile, received: <class 'str'>"
    document = client.get("/openapi.json").json()
    assert document["paths"]["/explain"]["post"]["requestBody"]["required"] is True
    assert "required" not in document["paths"]["/classify"]["post"]["requestBody"]
