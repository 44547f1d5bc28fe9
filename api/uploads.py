"""Photos out of a request body: multipart/form-data (files) or JSON (base64 strings). Read only
after the caller is authenticated and authorised (routes declare no body to FastAPI, so nothing is
parsed before their dependencies ran), within the body cap (`limits.BodyLimit`)."""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile

from .errors import ApiError


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass
class Body:
    photos: dict[str, list[Upload]]  # field → its photos
    fields: dict[str, str]  # the other fields, as text


async def read_body(request: Request, photo_fields: tuple[str, ...], max_photos: int) -> Body:
    """The request's photos (under `photo_fields`) and other fields; 415 for another content type,
    400 for a malformed body, 422 for bad base64 or too many photos."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart(request, photo_fields, max_photos)
    if kind == "application/json":
        return await _json(request, photo_fields, max_photos)
    raise ApiError(415, "send multipart/form-data (files) or application/json (base64 images)")


async def _multipart(request: Request, photo_fields, max_photos: int) -> Body:
    async with request.form(max_files=max_photos, max_fields=32) as form:
        photos: dict[str, list[Upload]] = {}
        fields: dict[str, str] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in photo_fields:
                    raise ApiError(422, f"unexpected file field {key!r}; photos go in {', '.join(photo_fields)}")
                photos.setdefault(key, []).append(Upload(value.filename or key, await value.read()))
            else:
                fields[key] = value
    return Body(photos, fields)


async def _json(request: Request, photo_fields, max_photos: int) -> Body:
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed JSON body") from None
    if not isinstance(data, dict):
        raise ApiError(422, "the JSON body must be an object")
    photos, fields = {}, {}
    for key, value in data.items():
        if key in photo_fields:
            values = value if isinstance(value, list) else [value]
            if len(values) > max_photos:
                raise ApiError(422, f"at most {max_photos} photos a request")
            photos[key] = [Upload(f"{key}[{i}]" if isinstance(value, list) else key, _base64(key, v))
                           for i, v in enumerate(values)]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            fields[key] = str(value)
        else:
            raise ApiError(422, f"field {key!r}: expected text or a number")
    return Body(photos, fields)


def _base64(key: str, value) -> bytes:
    if not isinstance(value, str):
        raise ApiError(422, f"field {key!r}: expected a base64 string")
    if value.startswith("data:") and "," in value:  # a data: URL
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"field {key!r} is not valid base64") from None


def one_photo(body: Body, field: str) -> Upload:
    photos = body.photos.get(field, [])
    if len(photos) != 1:
        raise ApiError(422, f"field {field!r}: exactly one photo expected, got {len(photos)}")
    return photos[0]


def number(body: Body, field: str, default, kind=float, low=None, high=None):
    """An optional numeric field, within [low, high]."""
    if field not in body.fields or body.fields[field] == "":
        return default
    try:
        value = kind(body.fields[field])
    except ValueError:
        raise ApiError(422, f"field {field!r}: expected a {kind.__name__}") from None
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(422, f"field {field!r}: {value} is outside [{low}, {high}]")
    return value
