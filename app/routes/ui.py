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


#: What a page may load and who may frame it: its own scripts, styles and API, photos and heatmaps as
#: data: and blob: URLs (a camera's shot, a base64 PNG), no other site, no frame around it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def page_response(name: str) -> HTMLResponse:
    return HTMLResponse(page(name), headers=PAGE_HEADERS)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui", response_class=HTMLResponse)
def classify_page() -> HTMLResponse:
    return page_response("index.html")


@router.get("/ui/train", response_class=HTMLResponse)
def training_page() -> HTMLResponse:
    return page_response("train.html")


@router.get("/ui/review", response_class=HTMLResponse)
def review_page() -> HTMLResponse:
    return page_response("review.html")
