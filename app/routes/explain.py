import base64
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from app.deps import ReadAccess, ServingDep
from app.errors import check_cam_options, error_responses, unprocessable
from app.forms import form_of, multipart_body
from app.routes.inference_views import ModelField, chosen_predictor, classification
from app.schemas import ExplanationPublic, TargetPublic
from app.uploads import read_image, refuse_repeated
from core.explain import explanation
from models.cam import list_cam_methods, resolve_layer
from models.cam.overlay import list_colormaps

router = APIRouter(tags=["inference"], dependencies=[ReadAccess], responses=error_responses(400, 422))


def parse_target(target: str | None, class_names: tuple[str, ...]) -> int | None:
    """A class given by name or index; None means the predicted class."""
    if target is None or target == "":
        return None
    if target in class_names:
        return class_names.index(target)
    # A class index has a few digits: a longer one is no index (and int() refuses over 4,300 digits).
    if target.isdecimal() and target.isascii() and len(target) <= 6 and int(target) < len(class_names):
        return int(target)
    valid = ", ".join(f"{index} ({name})" for index, name in enumerate(class_names))
    raise unprocessable(f"unknown target {target!r}; valid classes: {valid}")


# The form of POST /explain, read by app.forms.form_of. (No docstring: it would become the schema's
# description in the API document.)
class ExplainForm(BaseModel):
    model_config = ConfigDict(title="Body_explain")

    file: Annotated[UploadFile, File(description="one photo")]
    method: Annotated[
        str,
        Form(
            description=f"one of: {', '.join(list_cam_methods())}. scorecam runs a forward pass per channel "
            "of the layer (2048 for ResNet-50's last stage), seconds per image on a CPU that other requests "
            "wait behind; prefer it in /explain/batch",
            json_schema_extra={"enum": list_cam_methods()},
        ),
    ] = "gradcam"
    target: Annotated[
        str | None, Form(description="class name or index to explain; the predicted class if omitted")
    ] = None
    alpha: Annotated[float, Form(ge=0.0, le=1.0, description="heatmap weight in the overlay")] = 0.5
    colormap: Annotated[
        str,
        Form(
            description=f"one of: {', '.join(list_colormaps())}", json_schema_extra={"enum": list_colormaps()}
        ),
    ] = "jet"
    layer: Annotated[
        str | None, Form(description="submodule to explain; the last convolutional stage if omitted")
    ] = None
    model: ModelField = None


@router.post(
    "/explain",
    response_model=ExplanationPublic,
    responses=error_responses(401, 409, 413, 415, 422, 503),
    openapi_extra=multipart_body(ExplainForm),
)
async def explain_image(
    request: Request,
    # First: the body is read before anything else is looked up, as FastAPI reads its own forms.
    form: Annotated[ExplainForm, Depends(form_of(ExplainForm))],
    serving: ServingDep,
) -> ExplanationPublic:
    """Classify one photo and show why: a class-activation heatmap over it, from the same forward pass."""
    service, settings, metrics = serving.service, serving.settings, serving.metrics
    await refuse_repeated(request, "file")
    file, method, colormap, layer = form.file, form.method, form.colormap, form.layer
    check_cam_options(method, colormap)
    predictor = await chosen_predictor(service, form.model)
    target_index = parse_target(form.target, predictor.class_names)
    layer = layer or None
    if layer is not None:
        try:
            resolve_layer(predictor.model, layer)
        except ValueError as error:
            raise unprocessable(str(error)) from None
    # Decoded at the photo's own size, or scaled down to the longest overlay side.
    side = max(settings.overlay_max_side, predictor.spec.input_size)
    photo = await read_image(file, settings, predictor.prepare, min_side=side, max_side=side)
    image = photo.image
    try:
        # The model the target and layer were checked against, even if another begins serving meanwhile.
        outcome = await service.explain(
            photo.inputs, method=method, target=target_index, layer=layer, predictor=predictor
        )
    except ValueError as error:
        # The layer cannot be explained (its output is not a feature map, or it runs twice), or the
        # target no longer exists because another model began serving meanwhile.
        raise unprocessable(str(error)) from None
    shown = await run_in_threadpool(
        explanation,
        outcome.predictor,
        image,
        probabilities=outcome.probabilities,
        energy=outcome.energy,
        distance=outcome.distance,
        heatmap=outcome.heatmap,
        target=outcome.target,
        colormap=colormap,
        alpha=form.alpha,
    )
    return ExplanationPublic(
        **classification(file.filename, outcome, metrics).model_dump(),
        method=method,
        layer=layer or str(getattr(outcome.predictor.model, "cam_layer", "")),
        target=TargetPublic(index=shown.target, label=shown.target_label),
        overlay=base64.b64encode(shown.overlay_png).decode("ascii"),
        heatmap=base64.b64encode(shown.heatmap_png).decode("ascii"),
    )
