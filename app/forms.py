"""Multipart forms that a route reads and validates itself, documented as FastAPI documents its own.

FastAPI's form handling inspects each declared field's annotation again on every request, on the event
loop's one thread (a profile of it under load: ``python -m bench.thread_cpu ... --profile FILE``). A
route on the hot path declares its form as a pydantic model instead and depends on ``form_of(Model)``
(Starlette's parser, as FastAPI uses, then one validation of every field), documenting it with
``openapi_extra=multipart_body(Model)``.
"""

import functools
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

FormModel = TypeVar("FormModel", bound=BaseModel)
#: The form models documented by :func:`multipart_body`, by their schema's name.
DOCUMENTED_FORMS: dict[str, type[BaseModel]] = {}


@functools.cache
def _repeated_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields that take every value sent under their name (lists); the others take the last, as
    FastAPI's forms do."""
    repeated = set()
    for name, field in model.model_fields.items():
        kinds = (field.annotation, *typing.get_args(field.annotation))  # list[X] | None: either one
        if any(typing.get_origin(kind) is list for kind in kinds):
            repeated.add(name)
    return frozenset(repeated)


def form_of(model: type[FormModel]) -> Callable[[Request], AsyncIterator[FormModel]]:
    """A dependency giving the request's form as ``model``: 400 when the body cannot be parsed, 422
    naming each field at fault, as FastAPI's own forms answer. Its files are closed after the route
    (one spooled to disk is removed)."""

    async def dependency(request: Request) -> AsyncIterator[FormModel]:
        try:
            form = await request.form()
        except StarletteHTTPException:
            raise  # the parser's own answer (a missing boundary) or the request gate's
        except Exception as error:
            # FastAPI's own answer: the client's body is at fault, whatever the parser raised.
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "There was an error parsing the body") from error
        try:
            yield validated(form, model)
        finally:
            await form.close()

    return dependency


def validated(form: FormData, model: type[FormModel]) -> FormModel:
    """``form`` as ``model`` (422, :class:`RequestValidationError`, naming each field at fault)."""
    repeated = _repeated_fields(model)
    values: dict[str, Any] = {}
    for name in model.model_fields:
        if name in repeated and name in form:
            values[name] = form.getlist(name)
        # An empty text field is one left out, as FastAPI takes it (a form has no other way to say so).
        elif name in form and form[name] != "":
            values[name] = form[name]
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors(include_context=False)]
        ) from None


def multipart_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the route's multipart body: a reference to its schema,
    which :func:`document_forms` adds to the document's components, as FastAPI does its own forms'."""
    name = model.model_config.get("title") or model.__name__
    DOCUMENTED_FORMS[name] = model
    body: dict[str, Any] = {
        "content": {"multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
    }
    if any(field.is_required() for field in model.model_fields.values()):
        body["required"] = True  # as FastAPI says of a body with a required field
    return {"requestBody": body}


def document_forms(document: dict[str, Any]) -> None:
    """Add the schemas of the forms that routes read themselves to ``document``'s components."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, model in DOCUMENTED_FORMS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for nested, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(nested, definition)
        schemas.setdefault(name, schema)
