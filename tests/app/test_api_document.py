"""What Swagger UI, ReDoc and generated clients read: the pages served with local assets, the key as a
security scheme, short operation ids, enums for the options with fixed values, the training form in
the order people fill it in, and an example for every error status."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.settings import Settings
from models import list_models
from models.cam import list_cam_methods
from models.cam.overlay import list_colormaps
from tests.app.conftest import FakeSubmitter
from training.config import RECIPES


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/openapi.json").json()
    return body


def form_properties(document: dict[str, Any], path: str) -> dict[str, Any]:
    """The fields of an operation's multipart form, its own and those of the forms it includes."""
    schemas = document["components"]["schemas"]
    ref = document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    properties: dict[str, Any] = {}
    pending = [schemas[ref.rsplit("/", 1)[-1]]]
    while pending:
        schema = pending.pop(0)
        properties.update(schema.get("properties", {}))
        pending += [
            schemas[part["$ref"].rsplit("/", 1)[-1]] for part in schema.get("allOf", []) if "$ref" in part
        ]
    return properties


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_documentation_pages_load_their_assets_from_the_service(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert "cdn." not in page.text
    assets = [part.split('"')[0] for part in page.text.split('"/docs/assets/')[1:]]
    assert assets, "the page names no local asset"
    for asset in assets:
        assert client.get(f"/docs/assets/{asset}").status_code == 200, asset


def test_the_api_key_is_a_security_scheme_not_a_parameter(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": document["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            headers = [p["name"] for p in operation.get("parameters", []) if p["in"] == "header"]
            assert "X-API-Key" not in headers, f"{method} {path}"
    assert document["paths"]["/train"]["post"]["security"] == [{"ApiKey": []}]
    assert "401" in document["paths"]["/train"]["post"]["responses"]


def test_operation_ids_are_short_and_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert {"classify", "explain", "start_training", "promote_model", "rollback_model"} <= set(ids)
    assert all(len(operation_id) <= 24 for operation_id in ids)


def test_options_with_fixed_values_are_enums(document: dict[str, Any]) -> None:
    explain = form_properties(document, "/explain")
    assert explain["method"]["enum"] == list_cam_methods()
    assert explain["colormap"]["enum"] == list_colormaps()
    train = form_properties(document, "/train")
    assert train["recipe"]["enum"] == list(RECIPES)
    assert train["model"]["enum"] == list_models()


def test_the_training_form_starts_with_what_people_fill_in(document: dict[str, Any]) -> None:
    fields = list(form_properties(document, "/train"))
    assert fields[:6] == ["file", "data_path", "base", "base_version", "name", "recipe"]
    assert fields.index("epochs") > fields.index("model_kwargs")


def test_every_error_status_has_an_example(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    example = response["content"]["application/json"].get("example")
                    assert example, f"{method} {path} {code}"
                    assert example["detail"], f"{method} {path} {code}"


def test_a_read_says_its_key_is_optional_only_while_reads_are_open(
    document: dict[str, Any], settings: Settings, submitted: FakeSubmitter
) -> None:
    """Open reads answer without a key: the document says so (``{}`` among the requirements), and says
    a key is needed where one is."""
    optional: list[dict[str, list[str]]] = [{}, {"ApiKey": []}]
    for path, method in (("/classify", "post"), ("/train", "get"), ("/models", "get")):
        assert document["paths"][path][method]["security"] == optional, path
    for path, method in (("/train", "post"), ("/models/default", "put"), ("/review", "get")):
        assert document["paths"][path][method]["security"] == [{"ApiKey": []}], path
    protected = settings.model_copy(update={"protect_reads": True})
    with TestClient(create_app(protected, submitter=submitted)) as client:
        closed = client.get("/openapi.json").json()
    assert closed["paths"]["/classify"]["post"]["security"] == [{"ApiKey": []}]
    assert closed["paths"]["/train"]["get"]["security"] == [{"ApiKey": []}]
