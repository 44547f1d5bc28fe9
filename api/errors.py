"""Every error is JSON, `{"error": {"type", "message"}}`, with the status its cause deserves: the
library's typed errors map to 4xx here and nowhere else; anything unexpected is a 500 whose
traceback goes to the server's log, never to the client."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from faceverify.errors import (AccessError, AlreadyInGalleryError, AuthenticationError, FaceVerifyError,
                               GalleryBusyError, GalleryError, ImageTooLargeError, InvalidImageError,
                               InvalidNameError, ModelMismatchError, MultipleFacesError, NoFaceError,
                               NotInGalleryError, PermissionDeniedError)

log = logging.getLogger("faceverify.api")

#: library error → HTTP status, most specific first
STATUS = ((AuthenticationError, 401), (PermissionDeniedError, 403), (AccessError, 403),
          (ImageTooLargeError, 413), (InvalidImageError, 415), (NoFaceError, 422), (MultipleFacesError, 422),
          (InvalidNameError, 422), (NotInGalleryError, 404), (AlreadyInGalleryError, 409),
          (GalleryBusyError, 503), (ModelMismatchError, 409), (GalleryError, 409), (FaceVerifyError, 400))

HTTP_TYPES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
              405: "MethodNotAllowed", 408: "RequestTimeout", 409: "Conflict", 413: "PayloadTooLarge",
              415: "UnsupportedMediaType", 422: "ValidationError", 429: "TooManyRequests",
              503: "ServiceUnavailable", 504: "GatewayTimeout"}


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An HTTP error raised by the API's own layers (limits, bodies, routes)."""

    def __init__(self, status: int, message: str, headers: dict | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.kind = kind or HTTP_TYPES.get(status, "Error")


def error_json(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def library_error(exc: FaceVerifyError) -> ApiError:
    status = next(code for cls, code in STATUS if isinstance(exc, cls))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {"Retry-After": "1"} if status == 503 else None
    return ApiError(status, str(exc), headers, type(exc).__name__)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_json(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(FaceVerifyError)
    async def faceverify_error(request: Request, exc: FaceVerifyError):
        error = library_error(exc)
        return error_json(error.status, error.kind, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_json(exc.status_code, HTTP_TYPES.get(exc.status_code, "Error"), str(exc.detail),
                          getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:5])
        return error_json(422, "ValidationError", problems or "invalid request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_json(500, "InternalError", "internal error; the server's log has the details")
