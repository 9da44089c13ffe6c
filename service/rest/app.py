"""The FastAPI app: routes, the live-stream WebSocket, error handlers, the viewer and the edge middleware over one engine."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.engine import Engine
from service.rest.errors import add_error_handlers
from service.rest.middleware import EdgeMiddleware
from service.rest.routes import models_router, open_router
from service.rest.schemas import EXTRA_COMPONENTS
from service.rest.stream import stream_router
from service.rest.viewer import add_viewer


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI app serving ``engine``."""
    app = FastAPI(
        title="HALO inference server",
        version="1.0.0",
        description="Hand meshes from 21 keypoints, occupancy queries and grasps, batched on one engine.",
    )
    app.state.engine = engine
    add_error_handlers(app)
    app.include_router(models_router)
    app.include_router(open_router)
    app.include_router(stream_router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in EXTRA_COMPONENTS.items():
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[name] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    add_viewer(app)
    app.add_middleware(EdgeMiddleware, engine=engine)
    return app
