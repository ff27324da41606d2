"""The web pages: classify a photo (with its heatmap and similar training photos), train a model, and
label the photos the model was unsure of.

Plain HTML, CSS and JavaScript from ``app/static``, with nothing fetched from elsewhere, so they work
where the service has no internet; they call the same HTTP API as every other client.
"""

from functools import cache
from html import escape
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

from models.cam import list_cam_methods

#: Shipped inside the ``app`` package (see ``package-data`` in pyproject.toml).
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["pages"], include_in_schema=False)
#: The method the classify page explains with first (the paper's).
DEFAULT_METHOD = "gradcam"


@cache
def page(name: str) -> str:
    options = "".join(
        f'<option value="{escape(m)}"{" selected" if m == DEFAULT_METHOD else ""}>{escape(m)}</option>'
        for m in list_cam_methods()
    )
    return (STATIC_DIR / name).read_text(encoding="utf-8").replace("__METHOD_OPTIONS__", options)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui", response_class=HTMLResponse)
def classify_page() -> HTMLResponse:
    return HTMLResponse(page("index.html"))


@router.get("/ui/train", response_class=HTMLResponse)
def training_page() -> HTMLResponse:
    return HTMLResponse(page("train.html"))


@router.get("/ui/review", response_class=HTMLResponse)
def review_page() -> HTMLResponse:
    return HTMLResponse(page("review.html"))
