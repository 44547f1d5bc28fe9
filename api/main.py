"""The FastAPI application: routers, error handlers, the body cap; `serve` runs it on uvicorn."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from faceverify import Verifier

from . import errors
from .limits import BodyLimit
from .routers import identification, people, status, verification
from .service import Service
from .settings import ApiSettings

log = logging.getLogger("faceverify.api")

DESCRIPTION = """Face verification and identification over HTTP, on a faceverify gallery.

Every route but `/v1/health` needs an API key (`Authorization: Bearer fvk_...`), made with
`faceverify keys add NAME --scope verify --scope identify ... --gallery G`. Scopes: **verify**
(`/v1/verify`, `/v1/embed`), **identify** (`/v1/identify`), **enrol** (adding people, reading who is
enrolled), **admin** (everything, renames and removals included). Errors are JSON:
`{"error": {"type", "message"}}`."""


def create_app(verifier: Verifier, settings: ApiSettings) -> FastAPI:
    """The API over `verifier` and the gallery `settings.gallery` (created for the verifier's
    model if it does not exist)."""
    state = Service(verifier, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.close()

    app = FastAPI(title="faceverify", version=state.version, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = state
    errors.install(app)
    for module in (verification, identification, people, status):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, read_timeout_s=settings.read_timeout_s)
    return app


def serve(verifier: Verifier, settings: ApiSettings, host: str, port: int) -> None:
    import uvicorn

    app = create_app(verifier, settings)
    log.warning("faceverify API on http://%s:%d (docs at /docs); gallery %s", host, port, settings.gallery)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5,
                limit_concurrency=settings.workers + settings.queue + 64, server_header=False)
