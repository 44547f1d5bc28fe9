"""What the routers share: the service, OpenAPI descriptions of bodies they read themselves, the
face-policy field, and a face for JSON."""
from __future__ import annotations

from fastapi import Request

from faceverify.errors import FaceVerifyError
from faceverify.policies import POLICIES
from faceverify.verifier import face_dict

from ..errors import ApiError
from ..schemas import Face
from ..uploads import Body


def service(request: Request):
    return request.app.state.service


def face_policy(body: Body) -> str:
    policy = body.fields.get("face_policy", "single")
    if policy not in POLICIES:
        raise ApiError(422, f"face_policy {policy!r}: choose one of {', '.join(POLICIES)}")
    return policy


def analyze_one(verifier, data: bytes, policy: str):
    """The chosen face of one uploaded photo, embedded, or its typed error raised."""
    (found,) = verifier.analyze([data], ["photo"], policy)
    if isinstance(found, FaceVerifyError):
        raise found
    return found


def face(found) -> Face:
    return Face(**face_dict(found))


def photo_body(files: dict[str, str], fields: dict[str, dict] | None = None, required=()) -> dict:
    """`openapi_extra` documenting a body read by the route itself (multipart or JSON with base64)."""
    properties = {name: ({"type": "array", "items": {"type": "string", "format": "binary"}}
                         if many == "many" else {"type": "string", "format": "binary"})
                  for name, many in files.items()}
    json_properties = {name: ({"type": "array", "items": {"type": "string", "format": "byte"}}
                              if many == "many" else {"type": "string", "format": "byte"})
                       for name, many in files.items()}
    extra = fields or {}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {**properties, **extra},
                                           "required": list(required)}},
        "application/json": {"schema": {"type": "object", "properties": {**json_properties, **extra},
                                        "required": list(required)}}}}}


POLICY_FIELD = {"face_policy": {"type": "string", "enum": list(POLICIES), "default": "single",
                                "description": "which face of a photo holding several: single refuses to guess"}}
