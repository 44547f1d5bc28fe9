"""People in the gallery: enrol (`POST /v1/people`), add photos, list, show, rename, remove a person
or one photo. Every change reaches the audit trail under the caller's key, in its transaction; the
photos are kept beside the gallery and leave with their person (`Gallery.enroll_uploads`)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from faceverify.access.keys import ApiKey
from faceverify.gallery import identity_name

from ..auth import actor, require
from ..errors import ApiError
from ..schemas import EnrolResponse, PeopleList, Person, PersonSummary, Photo, Rejection, Rename
from ..uploads import read_body
from .common import photo_body, service

router = APIRouter(prefix="/v1/people", tags=["people"])

ENROL_BODY = photo_body({"photos": "many"}, {"name": {"type": "string", "maxLength": 200}}, ("name", "photos"))


def _enrol(svc, key: ApiKey, name: str, uploads, new_person: bool) -> EnrolResponse:
    with svc.gallery(actor(key)) as gallery:
        report = gallery.enroll_uploads(name, [(u.filename, u.data) for u in uploads], new_person)
    rejected = [Rejection(photo=photo, reason=why) for photo, why in report.rejected]
    if not report.added:
        raise ApiError(422, "no photo could be enrolled: " + "; ".join(f"{r.photo}: {r.reason}" for r in rejected),
                       kind="NoUsablePhoto")
    return EnrolResponse(name=report.name, added=report.added, rejected=rejected)


async def _photos_request(request: Request, key: ApiKey, name: str | None, new_person: bool) -> EnrolResponse:
    svc = service(request)
    body = await read_body(request, ("photos",), svc.settings.max_photos)
    name = identity_name(body.fields.get("name", "") if name is None else name)
    uploads = body.photos.get("photos", [])
    if not uploads:
        raise ApiError(422, "field 'photos': at least one photo")
    return await svc.pool.run(_enrol, svc, key, name, uploads, new_person)


@router.post("", status_code=201, response_model=EnrolResponse, openapi_extra=ENROL_BODY)
async def enrol(request: Request, key: ApiKey = Depends(require("enrol"))) -> EnrolResponse:
    """Enrol a new person from one or more photos (409 if the name is taken). Photos failing the
    quality gate are listed as rejected; 422 if none is usable (nothing is stored)."""
    return await _photos_request(request, key, None, new_person=True)


@router.post("/{name}/photos", response_model=EnrolResponse,
             openapi_extra=photo_body({"photos": "many"}, required=("photos",)))
async def add_photos(name: str, request: Request, key: ApiKey = Depends(require("enrol"))) -> EnrolResponse:
    """More photos of someone enrolled (404 if not)."""
    return await _photos_request(request, key, name, new_person=False)


@router.get("", response_model=PeopleList)
async def list_people(request: Request, key: ApiKey = Depends(require("enrol")),
                      offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> PeopleList:
    def read():
        with service(request).gallery(actor(key)) as gallery:
            return gallery.identities()

    people = await run_in_threadpool(read)
    return PeopleList(people=[PersonSummary(name=n, photos=k, enrolled=c) for n, k, c in people[offset:offset + limit]],
                      total=len(people))


@router.get("/{name}", response_model=Person)
async def show_person(name: str, request: Request, key: ApiKey = Depends(require("enrol"))) -> Person:
    """A person's photos: their quality measures (never the server's file paths)."""
    def read():
        with service(request).gallery(actor(key)) as gallery:
            return gallery.show(identity_name(name))

    images = await run_in_threadpool(read)
    return Person(name=name, photos=[Photo(**{k: image[k] for k in Photo.model_fields}) for image in images])


@router.patch("/{name}", response_model=PersonSummary)
async def rename_person(name: str, rename: Rename, request: Request,
                        key: ApiKey = Depends(require("admin"))) -> PersonSummary:
    def change():
        new = identity_name(rename.name)
        with service(request).gallery(actor(key)) as gallery:
            gallery.rename(identity_name(name), new)
            return next(row for row in gallery.identities() if row[0] == new)

    new, photos, enrolled = await run_in_threadpool(change)
    return PersonSummary(name=new, photos=photos, enrolled=enrolled)


@router.delete("/{name}", status_code=204, response_class=Response)
async def remove_person(name: str, request: Request, key: ApiKey = Depends(require("admin"))) -> Response:
    """Remove a person: embeddings, thumbnails and kept photos go; the audit trail keeps the line."""
    svc = service(request)

    def change():
        with svc.gallery(actor(key)) as gallery:
            gallery.remove(identity_name(name))

    await run_in_threadpool(change)
    return Response(status_code=204)


@router.delete("/{name}/photos/{photo_id}", status_code=204, response_class=Response)
async def remove_photo(name: str, photo_id: int, request: Request,
                       key: ApiKey = Depends(require("admin"))) -> Response:
    """Remove one photo (the person goes with their last one)."""
    svc = service(request)

    def change():
        with svc.gallery(actor(key)) as gallery:
            gallery.remove_image(photo_id, identity_name(name))

    await run_in_threadpool(change)
    return Response(status_code=204)
