"""The API's contract: every response is one of these models (and the OpenAPI schema says so)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Face(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in the photo's pixels")
    score: float = Field(description="the detector's confidence")
    landmarks: list[list[float]] = Field(description="eyes, nose, mouth corners: (x, y) each")
    whole_image: bool = False
    faces_found: int = Field(description="faces the photo held (the policy chose this one)")
    quality: dict[str, Any]


class OperatingPointInfo(BaseModel):
    name: str = Field(description="the model's named threshold in force, or 'custom'")
    far_on_dev_pairs: float | None = Field(description="impostor pairs of the model's dev set it accepts")


class VerifyResponse(BaseModel):
    same: bool
    score: float
    threshold: float
    operating_point: OperatingPointInfo
    reliable: bool = Field(description="false when a face is below the model's quality floor")
    problems: list[str]
    faces: list[Face]
    detector: str


class EmbedResponse(BaseModel):
    embedding: list[float]
    dimension: int
    model: str = Field(description="fingerprint of the model and detector: embeddings compare only within one")
    reliable: bool
    problems: list[str]
    face: Face


class Match(BaseModel):
    name: str
    score: float


class IdentifyResponse(BaseModel):
    name: str = Field(description="the person, or 'unknown' below the gallery's threshold")
    known: bool
    score: float
    threshold: float
    matches: list[Match]
    reliable: bool
    problems: list[str]
    operating_point: dict[str, Any] | None
    face: Face


class PersonSummary(BaseModel):
    name: str
    photos: int
    enrolled: str


class PeopleList(BaseModel):
    people: list[PersonSummary]
    total: int


class Photo(BaseModel):
    id: int
    det_score: float
    face_size: float
    sharpness: float
    quality: float | None
    created: str


class Person(BaseModel):
    name: str
    photos: list[Photo]


class Rejection(BaseModel):
    photo: str
    reason: str


class EnrolResponse(BaseModel):
    name: str
    added: list[str] = Field(description="the uploaded file names enrolled")
    rejected: list[Rejection]


class Rename(BaseModel):
    name: str = Field(description="the person's new name")


class ModelInfo(BaseModel):
    description: str
    weights_sha256: str
    fingerprint: str
    embedding_dim: int
    members: list[dict[str, Any]]
    detector: dict[str, Any]
    thresholds: dict[str, float]
    providers: list[str]


class Health(BaseModel):
    status: str
    version: str
