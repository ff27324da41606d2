"""Every operation of the OpenAPI document, called with examples generated from it (schemathesis),
answers as the document says: no 5xx, a documented status, a documented content type, a body that
fits its schema. Reads are protected too, so that every key check is on the way: with the key the
operations run past it, without it they must answer their documented 401."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from core.heartbeat import Heartbeat
from core.settings import Settings
from tests.app.conftest import API_KEY, FakeSubmitter, api_settings, png_bytes
from tests.training.helpers import make_image_folder

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# The document does not depend on the settings' paths: built once, with nothing started or written, so
# collecting this module costs no app. Examples that break the schema too, for the error answers.
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(), submitter=FakeSubmitter()).openapi())
SCHEMA.config.generation.update(modes=list(schemathesis.GenerationMode))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The tests' app (tiny model, fake job queue, one API key, reads protected), shared by every
    operation's examples; schemathesis starts its lifespan on the first request, and it stops here."""
    settings = api_settings(Path(tmp_path_factory.mktemp("schema")))
    settings.protect_reads = True
    # A live worker on each queue, as their heartbeats say, for /ready.
    beats = [Heartbeat(settings, f"{queue}@test") for queue in ("training", "heatmaps")]
    for beat in beats:
        beat.start()
    yield create_app(settings, submitter=FakeSubmitter())
    shutdown_lifespans()
    for beat in beats:
        beat.stop()


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case[Any], app: FastAPI) -> None:
    case.call_and_validate(app=app, headers={"X-API-Key": API_KEY}, checks=CHECKS)


@SCHEMA.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented_without_the_key(
    case: schemathesis.Case[Any], app: FastAPI
) -> None:
    # The generated X-API-Key header, where an operation takes one, is never the configured key. (Some
    # negative examples call the path with another method: 405, before any key check.)
    response = case.call_and_validate(app=app, checks=CHECKS)
    takes_key = any(p.name == "X-API-Key" for p in case.operation.iter_parameters())
    if takes_key and case.method.upper() == case.operation.method.upper():
        assert response.status_code == 401, response.text


def photo(size: tuple[int, int] = (40, 30)) -> bytes:
    return png_bytes(size=size)


def call(app: FastAPI, path: str, method: str, **case: Any) -> Any:
    """Call one operation with the given (not generated) request, checked as the generated ones are."""
    return (
        SCHEMA[path][method]
        .Case(**case)
        .call_and_validate(app=app, headers={"X-API-Key": API_KEY}, checks=CHECKS)
    )


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/classify", {"file": photo()}, 200),
        ("/classify", {"files": [photo(), photo((20, 50))]}, 200),
        ("/explain", {"file": photo(), "method": "gradcampp", "target": "glass", "colormap": "turbo"}, 200),
        ("/fingerprint", {"file": photo()}, 200),
        ("/similar", {"file": photo(), "k": 3}, 404),  # the tiny model has no index of training photos
    ],
)
def test_answers_to_real_photos_are_as_documented(
    app: FastAPI, path: str, body: dict[str, Any], status: int
) -> None:
    """Generated bodies are almost never images: these are, so that the successful answers are
    checked against the document too."""
    response = call(app, path, "POST", body=body, media_type="multipart/form-data")
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/explain/batch", {"files": [photo(), photo()], "method": "gradcam"}),
        ("/train", {"data_path": ["photos"], "model": "simple_cnn", "epochs": 1}),
    ],
)
def test_jobs_and_their_records_are_as_documented(app: FastAPI, path: str, body: dict[str, Any]) -> None:
    settings: Settings = app.state.settings
    make_image_folder(settings.resolved_data_root / "photos", per_class=2)
    created = call(app, path, "POST", body=body, media_type="multipart/form-data")
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    record = call(app, f"{path}/{{job_id}}", "GET", path_parameters={"job_id": job_id})
    assert (record.status_code, record.json()["state"]) == (200, "queued")
    if path == "/train":
        cancelled = call(app, "/train/{job_id}", "DELETE", path_parameters={"job_id": job_id})
        assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
        assert job_id in [job["id"] for job in call(app, "/train", "GET").json()]
    else:
        pending = call(app, "/explain/batch/{job_id}/result", "GET", path_parameters={"job_id": job_id})
        assert pending.status_code == 409


def test_no_form_field_is_documented_as_nullable() -> None:
    """A form cannot send null; fields that a form model brings (the training options derived from
    TrainConfig) are held to it too."""
    document = create_app(Settings(), submitter=FakeSubmitter()).openapi()
    schemas = document["components"]["schemas"]
    checked = 0
    for path in document["paths"].values():
        for operation in path.values():
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form is None:
                continue
            pending = [form["schema"]["$ref"]]
            while pending:
                schema = schemas[pending.pop().rsplit("/", 1)[-1]]
                pending += [part["$ref"] for part in schema.get("allOf", []) if "$ref" in part]
                for name, field in schema.get("properties", {}).items():
                    assert {"type": "null"} not in field.get("anyOf", []), name
                    checked += 1
    assert checked > 40  # the training options among them
