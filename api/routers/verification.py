"""1:1: are two photos the same person (`POST /v1/verify`), and a photo's embedding (`POST /v1/embed`)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from faceverify.access.keys import ApiKey
from faceverify.metadata import BEST_ACCURACY
from faceverify.metrics import far_at_threshold

from ..auth import require
from ..schemas import EmbedResponse, OperatingPointInfo, VerifyResponse
from ..uploads import number, one_photo, read_body
from .common import POLICY_FIELD, analyze_one, face, face_policy, photo_body, service

router = APIRouter(prefix="/v1", tags=["verification"])


@router.post("/verify", response_model=VerifyResponse, openapi_extra=photo_body(
    {"image_a": "one", "image_b": "one"},
    {"threshold": {"type": "number", "description": "default: the model's best-accuracy threshold"}, **POLICY_FIELD},
    ("image_a", "image_b")))
async def verify(request: Request, key: ApiKey = Depends(require("verify"))) -> VerifyResponse:
    """Are the faces in two photos the same person? The fields of `faceverify verify --json`."""
    svc = service(request)
    body = await read_body(request, ("image_a", "image_b"), 2)
    a, b = one_photo(body, "image_a"), one_photo(body, "image_b")
    threshold = number(body, "threshold", None, float, -1.0, 1.0)
    verifier = svc.verifier
    result = await svc.pool.run(verifier.verify, a.data, b.data, threshold, face_policy(body))
    roc = verifier.metadata.pairs_roc
    point = OperatingPointInfo(name=BEST_ACCURACY if threshold is None else "custom",
                               far_on_dev_pairs=far_at_threshold(roc, result.threshold) if roc else None)
    return VerifyResponse(same=result.same, score=round(result.score, 6), threshold=result.threshold,
                          operating_point=point, reliable=result.reliable, problems=result.problems,
                          faces=[face(f) for f in result.faces], detector=verifier.detector_name)


@router.post("/embed", response_model=EmbedResponse,
             openapi_extra=photo_body({"image": "one"}, POLICY_FIELD, ("image",)))
async def embed(request: Request, key: ApiKey = Depends(require("verify"))) -> EmbedResponse:
    """The face's embedding (L2-normalised), comparable by cosine with this model's only."""
    svc = service(request)
    body = await read_body(request, ("image",), 1)
    found = await svc.pool.run(analyze_one, svc.verifier, one_photo(body, "image").data, face_policy(body))
    return EmbedResponse(embedding=[float(v) for v in found.embedding], dimension=len(found.embedding),
                         model=svc.verifier.fingerprint, reliable=found.reliable,
                         problems=list(found.quality.problems), face=face(found))
