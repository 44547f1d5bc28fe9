"""1:N: who is this (`POST /v1/identify`), against the gallery, with its open-set decision."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from faceverify.access.keys import ApiKey

from ..auth import actor, require
from ..schemas import IdentifyResponse, Match
from ..uploads import number, one_photo, read_body
from .common import POLICY_FIELD, analyze_one, face, face_policy, photo_body, service

router = APIRouter(prefix="/v1", tags=["identification"])


def _identify(svc, key: ApiKey, data: bytes, policy: str, top_k: int):
    found = analyze_one(svc.verifier, data, policy)
    with svc.gallery(actor(key)) as gallery:
        (answer,) = gallery.identify_faces([found], top_k)
    return answer


@router.post("/identify", response_model=IdentifyResponse, openapi_extra=photo_body(
    {"image": "one"}, {"top_k": {"type": "integer", "default": 5, "minimum": 1, "maximum": 100}, **POLICY_FIELD},
    ("image",)))
async def identify(request: Request, key: ApiKey = Depends(require("identify"))) -> IdentifyResponse:
    """The best matches, best first, and the name when the best passes the gallery's threshold
    (set for its size by the target rate of strangers accepted); 'unknown' otherwise."""
    svc = service(request)
    body = await read_body(request, ("image",), 1)
    top_k = number(body, "top_k", 5, int, 1, 100)
    answer = await svc.pool.run(_identify, svc, key, one_photo(body, "image").data, face_policy(body), top_k)
    out = answer.to_dict()
    return IdentifyResponse(name=out["name"], known=out["known"], score=out["score"], threshold=out["threshold"],
                            matches=[Match(**m) for m in out["matches"]], reliable=out["reliable"],
                            problems=out["problems"], operating_point=out["operating_point"], face=face(answer.face))
