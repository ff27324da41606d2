"""Request and response bodies, named by role."""

from typing import Any

from pydantic import BaseModel, Field


class ErrorPublic(BaseModel):
    detail: str = Field(
        examples=["photo.txt: not an image in a supported format (JPEG, PNG, WEBP, BMP, GIF, TIFF)"]
    )


class ModelRef(BaseModel):
    name: str = Field(examples=["se_resnet50"])
    version: str = Field(examples=["v3"])


class ServingModel(ModelRef):
    """The model a replica serves, down to its weights: replicas behind one address can be told apart
    while a new default reaches them."""

    sha256: str = Field(
        description="the weights' digest",
        examples=["80757b6a53bd029cbee1db224ee18a980d9316d70b0a463ca787d8b90850ea61"],
    )


class ClassProbability(BaseModel):
    label: str = Field(examples=["glass"])
    probability: float = Field(ge=0.0, le=1.0, examples=[0.91])


class UnsureRule(BaseModel):
    """The thresholds an answer was judged sure or unsure by."""

    min_probability: float = Field(
        description="a calibrated top probability under this is unsure", examples=[0.83]
    )
    max_energy: float | None = Field(None, description="an energy over this is unlike the training photos")
    max_distance: float | None = Field(
        None, description="a feature distance over this is unlike the training photos (None: not measured)"
    )
    target_accuracy: float | None = Field(
        None,
        description="the share of sure answers on the validation photos that min_probability was chosen "
        "to get right (None: set by hand)",
        examples=[0.95],
    )


class Classification(BaseModel):
    filename: str | None = Field(None, examples=["bottle.jpg"])
    model: ModelRef = Field(description="the model that answered")
    routed_from: ModelRef | None = Field(
        None,
        description="the model asked, when it is a site's fine-tune that passed the photo to its base: the "
        "photo looks more like the base's training photos than the site's",
    )
    label: str = Field(description="the most probable class", examples=["glass"])
    predictions: list[ClassProbability] = Field(
        description="every class, most probable first; sums to 1; calibrated when the model is"
    )
    calibrated: bool = Field(
        description="whether the probabilities are temperature-scaled to match the model's accuracy"
    )
    energy: float = Field(
        description="out-of-distribution score, -logsumexp of the logits: higher is less like the "
        "training photos",
        examples=[-7.4],
    )
    distance: float | None = Field(
        None,
        description="out-of-distribution score: cosine distance of the photo's pooled features to the k-th "
        "nearest training photo's, in [0, 2], higher is less like them (None: the model has no feature bank)",
        examples=[0.21],
    )
    unsure: bool = Field(
        description="the top probability is under the model's threshold, or the energy or the distance "
        "over its threshold: a person should look"
    )
    unsure_reasons: list[str] = Field(
        default_factory=list,
        description="why it is unsure: 'low confidence' and/or 'unlike the training photos'; empty: sure",
        examples=[["unlike the training photos"]],
    )
    rule: UnsureRule = Field(description="the thresholds that decided unsure")
    review_id: str | None = Field(
        None, description="the review queue item this photo was kept as (GET /review/{id}); null: not kept"
    )
    inference_ms: float = Field(description="model time of the batch this image was computed in")
    batch_size: int = Field(description="images in that batch (concurrent requests are batched together)")
    backend: str = Field(
        description="what ran the forward pass: 'openvino' (compiled) or 'torch' (eager; explanations of "
        "a layer other than the last stage always run there)",
        examples=["openvino"],
    )


class ClassifyPublic(BaseModel):
    results: list[Classification]


class TargetPublic(BaseModel):
    index: int = Field(examples=[1])
    label: str = Field(examples=["glass"])


class ExplanationPublic(Classification):
    method: str = Field(examples=["gradcam"])
    layer: str = Field(examples=["layer4"])
    target: TargetPublic = Field(description="the class the heatmap explains")
    overlay: str = Field(
        description="base64 PNG: the heatmap over the photo, at the photo's own size (scaled down to "
        "TRASHCAM_OVERLAY_MAX_SIDE, 1024 px by default, on its longest side)"
    )
    heatmap: str = Field(
        description="base64 grayscale PNG of the heatmap (255 = strongest), at the overlay's size"
    )


class ModelPublic(BaseModel):
    name: str
    version: str
    default: bool = Field(description="whether the service is serving this version")
    arch: str
    classes: list[str]
    input_size: int
    metrics: dict[str, Any]
    recipe: dict[str, Any]
    calibration: dict[str, Any] = Field(
        description="temperature and 'unsure' thresholds, fitted on held-out photos; empty: uncalibrated"
    )
    created_at: str
    sha256: str
    builtin: bool = Field(
        False, description="the model that ships with the service: read-only, it cannot be deleted"
    )


class ModelsPublic(BaseModel):
    serving: ModelRef | None
    models: list[ModelPublic]


class PromotionPublic(BaseModel):
    """One change of the model that serves."""

    at: float = Field(description="Unix time")
    by: str | None = Field(
        description="the name of the API key that made it; null: a training job or unknown"
    )
    from_: str | None = Field(alias="from", description="what served before (name:version)")
    to: str = Field(description="what serves since (name:version)", examples=["se_resnet50:v2"])
    reason: str = Field(examples=["promote", "rollback of site-a:v3", "training job 3a7182..."])

    model_config = {"populate_by_name": True}


class DefaultModelUpdate(BaseModel):
    name: str = Field(examples=["se_resnet50"])
    version: str | None = Field(
        None, description="a version of the model; the newest if omitted", examples=["v2"]
    )


class HealthPublic(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyPublic(BaseModel):
    ready: bool
    model: ServingModel | None
    model_source: str = Field(
        description="why this model serves: the store's default, else the configured model "
        "(TRASHCAM_MODEL_PATH), else the shipped one; the API and every worker follow the same rule",
        examples=["model site-a:v2: the store's default"],
    )
    redis: bool
    workers: dict[str, int] = Field(
        description="live workers per job queue (their heartbeat is fresh); none on a queue: not ready",
        examples=[{"training": 1, "heatmaps": 1}],
    )
    device: str = Field(description="where models infer", examples=["cpu", "cuda"])
    precision: str = Field(
        description="the number format models infer in, chosen for the device: on torch with its layout, "
        "compiled (backend 'openvino') 'fp32', 'bf16' or 'int8' (the model's int8 network, "
        "TRASHCAM_INFERENCE_INT8)",
        examples=["bf16+channels_last", "bf16", "int8"],
    )
    backend: str = Field(
        description="what runs the serving model's forward passes: 'openvino' or 'torch' (TRASHCAM_INFERENCE_"
        "BACKEND; a model that cannot be converted runs on torch)",
        examples=["openvino"],
    )
    lanes: str = Field(
        description="how many batches run at once, and on how many threads each",
        examples=["2 lanes x 1 thread"],
    )
    detail: str | None = None


class JobPublic(BaseModel):
    id: str = Field(examples=["3f1c0e6a9b8d4c2e8f7a6b5c4d3e2f10"])
    kind: str = Field(examples=["training"])
    submitted_by: str | None = Field(None, description="the name of the API key that started it")
    state: str = Field(description="queued, running, succeeded, failed or cancelled", examples=["running"])
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    epoch: int = Field(description="training: epochs started")
    epochs: int = Field(description="training: epochs in the run")
    images_done: int = Field(0, description="heatmaps: photos explained so far")
    images: int = Field(0, description="heatmaps: photos in the batch")
    progress: float = Field(ge=0.0, le=1.0)
    eta_seconds: float | None
    metrics: dict[str, float | None] = Field(
        description="latest step's running metrics; null where one is not a number (a diverged run)"
    )
    history: list[dict[str, Any]] = Field(description="one record per finished epoch")
    result: dict[str, Any] = Field(description="training: the registered model version; heatmaps: the zip")
    error: str | None
    cancel_requested: bool
    attempts: int
    pruned_at: float | None = Field(
        None, description="when the job's uploads, data and results were removed after the retention time"
    )
    params: dict[str, Any] = Field(
        description="what the job runs: training, the model name and its whole training config (server "
        "paths left out); heatmaps, the method, colormap and alpha"
    )


class FingerprintPublic(BaseModel):
    filename: str | None = Field(None, examples=["bottle.jpg"])
    model: ModelRef
    hash: str = Field(
        description="64-bit deep-feature perceptual hash, 16 hex digits (see models.fingerprint)",
        examples=["e819e35e31897c69"],
    )
    backend: str = Field(
        description="what ran the forward pass, in fp32 either way: 'openvino' (compiled) or 'torch' (eager)",
        examples=["openvino"],
    )


class NeighbourPublic(BaseModel):
    rank: int = Field(examples=[1])
    label: str = Field(description="the training photo's own class", examples=["glass"])
    distance: float = Field(description="Hamming bits (by hash) or 1 - cosine (by embedding)")
    path: str = Field(description="the photo within its data set", examples=["glass/glass12.jpg"])
    thumbnail: str = Field(description="base64 JPEG, at most 64 px a side")


class SimilarPublic(FingerprintPublic):
    label: str = Field(description="what the model predicts for the photo", examples=["glass"])
    unsure: bool
    by: str = Field(description="hash (Hamming distance) or embedding (cosine)", examples=["hash"])
    indexed: int = Field(description="training photos in the model's index")
    search_ms: float = Field(description="time to search the whole index")
    neighbours: list[NeighbourPublic]


class ReviewLabelPublic(BaseModel):
    label: str = Field(examples=["glass"])
    by: str = Field(description="the name of the key that labelled it", examples=["reviewer-ana"])
    at: float = Field(description="when (Unix time)")


class ReviewItemPublic(BaseModel):
    id: str = Field(examples=["9b2f0c4e5d6a47f8b1c3d2e4f5a6b7c8"])
    created_at: float = Field(description="when the photo was answered (Unix time)")
    site: str | None = Field(None, description="the site tag the photo was sent with", examples=["sd"])
    model: str = Field(
        description="the model asked (name:version): a site's model, also where its base answered the photo",
        examples=["se_resnet50:builtin"],
    )
    filename: str | None = None
    predicted: str = Field(description="the model's guess", examples=["paper"])
    confidence: float = Field(description="the guess's calibrated probability", examples=[0.46])
    probabilities: dict[str, float]
    energy: float
    distance: float | None
    unsure: bool
    unsure_reasons: list[str]
    classes: list[str] = Field(description="what a label may be, besides 'skip' and 'not waste'")
    label: str | None = Field(None, description="the latest label (null: waiting for a person)")
    labels: list[ReviewLabelPublic] = Field(description="every label given, oldest first")
    thumbnail: str | None = Field(None, description="base64 JPEG, at most 256 px a side (one item only)")
    heatmap: str | None = Field(
        None,
        description="base64 PNG: the Grad-CAM of the guess over the photo, from the model that answered "
        "(one item only; null when that model was deleted since)",
    )


class ReviewPage(BaseModel):
    items: list[ReviewItemPublic]
    total: int = Field(description="items that match, on every page")
    limit: int
    offset: int
