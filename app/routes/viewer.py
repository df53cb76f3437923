"""The case page's viewer: what it draws besides the film and the overlays of `cases`.

API: GET /api/v1/predictions/{id}/heat-maps/{model_id}/{cls}.png (a heat map's values, for the page's
own colouring, opacity and iso-lines), GET /api/v1/images/{sha256}/thumbnail.jpg (the worklist's
thumbnails), GET /api/v1/images/{sha256}/values.json and .../values.u16 (a DICOM film's modality values,
for window/level over its full range). All authenticated and `no-store`, like every patient image.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.deps import CurrentUser, SessionDep, StoreDep
from app.routes.cases import IMAGE_CACHE_HEADERS, PNG_RESPONSES
from app.schemas import ERRORS, FilmValuesOut
from app.services import viewer

api = APIRouter(prefix="/api/v1", tags=["api"])


@api.get(
    "/predictions/{prediction_id}/heat-maps/{model_id}/{cls}.png", response_class=Response, responses=PNG_RESPONSES
)
def get_heat_map(
    prediction_id: int, model_id: int, cls: str, session: SessionDep, store: StoreDep, _user: CurrentUser
) -> Response:
    """One class's heat map as 8-bit grayscale values over the film (its aspect, longest side ≤ 512 px):
    0 = no evidence, 255 = the map's maximum; 0 outside a lung-crop model's box."""
    png = viewer.heat_map_png(session=session, store=store, prediction_id=prediction_id, model_id=model_id, cls=cls)
    return Response(png, media_type="image/png", headers=IMAGE_CACHE_HEADERS)


@api.get(
    "/images/{image_sha256}/thumbnail.jpg",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
)
def get_thumbnail(image_sha256: str, session: SessionDep, store: StoreDep, _user: CurrentUser) -> Response:
    """A film's worklist thumbnail: grayscale JPEG, longest side 192 px, at most 20 KB; cached on disk."""
    jpeg = viewer.film_thumbnail(session=session, store=store, image_sha256=image_sha256)
    return Response(jpeg, media_type="image/jpeg", headers=IMAGE_CACHE_HEADERS)


@api.get("/images/{image_sha256}/values.json", response_model=FilmValuesOut, responses=ERRORS)
def get_film_values(
    image_sha256: str, session: SessionDep, store: StoreDep, _user: CurrentUser, response: Response
) -> FilmValuesOut:
    """How to read a DICOM film's modality values (RescaleSlope/Intercept applied, before any VOI) and the
    file's own windows; 404 for a PNG or JPEG film, which has only its 8-bit grey values."""
    response.headers.update(IMAGE_CACHE_HEADERS)
    return FilmValuesOut.model_validate(viewer.film_values(session=session, store=store, image_sha256=image_sha256))


@api.get(
    "/images/{image_sha256}/values.u16",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
)
def get_film_values_data(
    image_sha256: str, request: Request, session: SessionDep, store: StoreDep, _user: CurrentUser
) -> Response:
    """A DICOM film's modality values: width×height little-endian uint16 from the top left, no header;
    modality value = offset + scale × uint16 (offset and scale in values.json). Sent gzip-encoded to a client
    that accepts it (`Content-Encoding: gzip`; browsers decode it themselves). 404 for a PNG or JPEG film."""
    gzipped = "gzip" in request.headers.get("accept-encoding", "").lower()
    data = viewer.film_values_data(session=session, store=store, image_sha256=image_sha256, gzipped=gzipped)
    headers = {**IMAGE_CACHE_HEADERS, "Vary": "Accept-Encoding"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return Response(data, media_type="application/octet-stream", headers=headers)


router = APIRouter()
router.include_router(api)
