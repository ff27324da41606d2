"""The naive peer the service is measured against: the plain FastAPI app one would write first.

    python -m bench.naive_peer --checkpoint weights/se_resnet50/model.pt --port 8101

One forward pass per request in fp32, in FastAPI's thread pool; ``/explain`` with pytorch-grad-cam's
``GradCAM`` and ``show_cam_on_image``. pytorch-grad-cam keeps the activations of the call on its
object and hooks the shared model, so concurrent calls would mix them up: a lock lets one explanation
run at a time (the least a correct peer must do), and each builds and releases its own ``GradCAM``.
Same checkpoint, same preprocessing, same responses in substance (probabilities; a base64 PNG
overlay at the photo's size).
"""

import argparse
import base64
import io
import threading
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image

from models.cam import resolve_layer
from models.checkpoint import build_model, load_checkpoint
from models.transforms import build_eval_transform


def create_peer(checkpoint_path: Path) -> FastAPI:
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_model(checkpoint).eval()
    names = checkpoint.spec.class_names
    transform = build_eval_transform(checkpoint.spec)
    layer = resolve_layer(model, None)
    cam_lock = threading.Lock()
    app = FastAPI(title="naive peer")
    app.state.model = model

    def probabilities(logits: torch.Tensor) -> dict[str, float]:
        return dict(zip(names, torch.softmax(logits.float(), dim=1)[0].tolist(), strict=True))

    @app.post("/classify")
    def classify(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        image = Image.open(file.file).convert("RGB")
        with torch.inference_mode():
            scores = probabilities(model(transform(image).unsqueeze(0)))
        return {"label": max(scores, key=scores.__getitem__), "probabilities": scores}

    @app.post("/explain")
    def explain(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        image = Image.open(file.file).convert("RGB")
        batch = transform(image).unsqueeze(0)
        # Built per request: pytorch-grad-cam hooks the layer until released, and its hooks would
        # otherwise run in every /classify forward pass too.
        with cam_lock, GradCAM(model=model, target_layers=[layer]) as cam:
            heatmap = cam(input_tensor=batch, targets=None)[0]
            scores = probabilities(cam.outputs)
        photo = np.asarray(image, dtype=np.float32) / 255
        heatmap = cv2.resize(heatmap, (photo.shape[1], photo.shape[0]))
        overlay = show_cam_on_image(photo, heatmap, use_rgb=True)
        buffer = io.BytesIO()
        Image.fromarray(overlay).save(buffer, format="PNG")
        return {
            "label": max(scores, key=scores.__getitem__),
            "probabilities": scores,
            "overlay": base64.b64encode(buffer.getvalue()).decode("ascii"),
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    uvicorn.run(create_peer(args.checkpoint), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
