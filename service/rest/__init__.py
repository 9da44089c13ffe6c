"""The REST front end (FastAPI): schemas, routes, errors, uploads, edge middleware and the web viewer."""

from service.rest.app import create_app

__all__ = ["create_app"]
