"""The service itself: `GET /v1/health` (no key: for load balancers) and `GET /v1/model` (any key)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from faceverify.access.keys import ApiKey

from ..auth import require
from ..schemas import Health, ModelInfo
from .common import service

router = APIRouter(prefix="/v1", tags=["service"])


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    return Health(status="ok", version=service(request).version)


@router.get("/model", response_model=ModelInfo)
async def model(request: Request, key: ApiKey = Depends(require(None))) -> ModelInfo:
    """The model answering: members and their licences, detector, thresholds, weights' sha256."""
    verifier = service(request).verifier
    meta = verifier.metadata
    return ModelInfo(description=meta.description, weights_sha256=meta.weights_sha256,
                     fingerprint=verifier.fingerprint, embedding_dim=meta.embedding_dim,
                     members=[{k: m[k] for k in ("name", "arch", "embedding_dim", "weight", "licence", "source") if k in m}
                              for m in meta.members],
                     detector=meta.detector or {"name": verifier.detector_name},
                     thresholds={k: float(v["value"]) for k, v in meta.thresholds.items()
                                 if isinstance(v, dict) and "value" in v},
                     providers=list(verifier.providers))
