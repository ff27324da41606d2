"""The OpenAPI document, corrected where FastAPI's own does not say what the service answers."""

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.access import access_rules
from app.errors import ERROR_EXAMPLES
from app.forms import document_forms
from app.schemas import ErrorPublic

ERROR_REF = {"$ref": f"#/components/schemas/{ErrorPublic.__name__}"}
#: What a key check answers: 401 for a missing or wrong key, 403 when none is configured.
ACCESS_ERRORS = {"401": "Unauthorized", "403": "Forbidden"}


def document_access_errors(document: dict[str, Any]) -> None:
    """Add 401 and 403 to every operation behind a key check. The check is one dependency shared by
    many routes (:func:`app.deps.require_api_key`, :func:`app.deps.require_read_access`), and each
    operation that has it names the key's security scheme, so it is found by that, and no route can
    forget to say what the check answers. Reads need a key only with ``protect_reads`` set, but the
    document is the same for every configuration."""
    for path in document["paths"].values():
        for operation in path.values():
            if not operation.get("security"):
                continue
            for code, description in ACCESS_ERRORS.items():
                example = {"detail": ERROR_EXAMPLES[int(code)]}
                operation["responses"].setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": ERROR_REF, "example": example}},
                    },
                )


def form_fields_without_null(document: dict[str, Any]) -> None:
    """Drop ``null`` from the fields of multipart bodies. A form cannot send null: a field left out
    takes its default, and one sent as the text "null" is the string "null". FastAPI documents an
    optional form field (``str | None``) as ``anyOf: [string, null]``, which tells clients and
    generated tests to send exactly that; an optional file field so documented is not even recognised
    as a file."""
    schemas = document.get("components", {}).get("schemas", {})
    for path in document["paths"].values():
        for operation in path.values():
            body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if body is None or "$ref" not in body["schema"]:
                continue
            for form in form_schemas(schemas, body["schema"]["$ref"]):
                for name, field in form.get("properties", {}).items():
                    form["properties"][name] = without_null(field)


def form_schemas(schemas: dict[str, Any], ref: str) -> list[dict[str, Any]]:
    """The body's schema and those it takes fields from (``allOf``: a form model, such as the training
    options derived from ``TrainConfig``)."""
    form = schemas[ref.rsplit("/", 1)[-1]]
    parts = [form]
    for part in form.get("allOf", []):
        if "$ref" in part:
            parts.extend(form_schemas(schemas, part["$ref"]))
    return parts


def without_null(field: dict[str, Any]) -> dict[str, Any]:
    alternatives = [a for a in field.get("anyOf", []) if a != {"type": "null"}]
    if "anyOf" not in field or len(alternatives) == len(field["anyOf"]):
        return field
    rest = {key: value for key, value in field.items() if key != "anyOf" and value is not None}
    if len(alternatives) == 1:
        return {**alternatives[0], **rest}
    return {**rest, "anyOf": alternatives}


#: Short operation ids, as clients generated from the document name their methods (``client.classify``).
OPERATION_IDS = {
    "classify_images": "classify",
    "explain_image": "explain",
    "fingerprint_image": "fingerprint",
    "similar_images": "similar",
    "create_heatmap_batch": "start_heatmap_batch",
    "read_heatmap_batch": "read_heatmap_batch",
    "read_heatmap_batch_result": "download_heatmap_batch",
    "create_training_job": "start_training",
    "read_training_jobs": "list_training_jobs",
    "read_training_job": "read_training_job",
    "cancel_training_job": "cancel_training_job",
    "read_models": "list_models",
    "read_default_model": "read_serving_model",
    "update_default_model": "promote_model",
    "read_promotions": "list_promotions",
    "rollback_default_model": "rollback_model",
    "read_model": "read_model",
    "delete_model_version": "delete_model_version",
    "read_review_items": "list_review_items",
    "read_review_item": "read_review_item",
    "read_review_photo": "read_review_photo",
    "label_review_item": "label_review_item",
    "read_health": "health",
    "read_ready": "ready",
    "read_metrics": "metrics",
}


def operation_id(route: APIRoute) -> str:
    """The short id of a route's operation (its function's name when none is declared)."""
    return OPERATION_IDS.get(route.name, route.name)


def document_open_reads(document: dict[str, Any], app: Any, *, protect_reads: bool) -> None:
    """Mark the key optional (``security: [{}, ApiKey]``) on the operations that answer without one as
    the service is configured (the gate's rule, :mod:`app.access`): a client, or a generated test,
    should not be told that an open read needs a key."""
    for rule in access_rules(app):
        if rule.role is None or rule.needed_role(protect_reads=protect_reads) is not None:
            continue
        for method in rule.methods:
            operation = document["paths"].get(rule.path, {}).get(method.lower())
            security = None if operation is None else operation.get("security")
            if security and {} not in security:
                operation["security"] = [{}, *security]


class DocumentedAPI(FastAPI):
    """FastAPI, whose OpenAPI document lists the access errors, has no null form fields, and says
    whether reads need a key as the service is configured."""

    def openapi(self) -> dict[str, Any]:
        # FastAPI caches its document until the routes change; the corrections are idempotent.
        document = super().openapi()
        document_access_errors(document)
        document_forms(document)
        form_fields_without_null(document)
        settings = getattr(self.state, "settings", None)
        if settings is not None:
            document_open_reads(document, self, protect_reads=settings.protect_reads)
        return document
