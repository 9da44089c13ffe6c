"""The web viewer: one static page at ``/`` (and ``/viewer``), its files under ``/static``, and the
JSON it starts from (joint orders and their bones, the server's limits, the bundled sample hand and sequence).

The page is open like ``/healthz``; the model endpoints it calls keep their bearer-token check, and the
page asks for the token when one answers 401. Everything it loads comes from this server (three.js is
vendored under ``static/vendor/three``), and its Content-Security-Policy allows nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.middleware.gzip import GZipMiddleware
from starlette.staticfiles import StaticFiles

from models import skeleton
from models.assets import sample_hand, sample_sequence
from service.rest.schemas import JointOrderName

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE = STATIC_DIR / "index.html"

# Only this origin, for everything; no inline script or style, no plugins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The page's choices of joint order: those the API takes (the canonical ones and their aliases).
JOINT_ORDER_CHOICES = get_args(JointOrderName)


def viewer_config(request: Request) -> dict:
    """What the page needs before its first request: limits, joint orders with bones, the sample hand and sequence."""
    settings = request.app.state.engine.settings
    return {
        "resolutions": list(settings.resolutions),
        "default_resolution": settings.default_resolution,
        "max_hands": settings.max_hands,
        "max_grasp_samples": settings.max_grasp_samples,
        "default_grasp_samples": settings.default_grasp_samples,
        "max_upload_bytes": settings.max_upload_bytes,
        "joint_orders": {name: skeleton.bones(name).tolist() for name in JOINT_ORDER_CHOICES},
        "sample": sample_hand(),
        "sample_sequence": sample_sequence(),
    }


def add_viewer(app: FastAPI) -> None:
    """Serve the page at ``/`` and ``/viewer``, its configuration and its static files (gzipped)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    @router.get("/viewer")
    async def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html", headers=PAGE_HEADERS)

    @router.get("/viewer/config.json")
    async def config(request: Request) -> JSONResponse:
        return JSONResponse(viewer_config(request), headers={"Cache-Control": "no-cache"})

    app.include_router(router)
    app.mount("/static", GZipMiddleware(StaticFiles(directory=STATIC_DIR), minimum_size=1024), name="static")
