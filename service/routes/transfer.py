"""/transfer: render the identity of one crop in the pose, background and light of another."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile

from genreid.service.core.imaging import to_png
from genreid.service.dependencies import EncodersDep, GalleryDep, ReaderDep
from genreid.service.errors import error_responses
from genreid.service.routes.gallery import MAX_ENTRY_ID

router = APIRouter(tags=["transfer"])

PNG_RESPONSE = {200: {"description": "the rendered image", "content": {"image/png": {}}}}


@router.post(
    "/transfer", response_class=Response, responses={**PNG_RESPONSE, **error_responses(400, 404, 413, 422)}
)
def transfer(
    pose: Annotated[UploadFile, File(description="the crop whose pose, background and light are kept")],
    encoders: EncodersDep,
    gallery: GalleryDep,
    reader: ReaderDep,
    identity: Annotated[UploadFile | None, File(description="the crop whose person is drawn")] = None,
    identity_entry_id: Annotated[
        int | None, Form(ge=1, le=MAX_ENTRY_ID, description="or: the gallery entry whose stored code is drawn")
    ] = None,
    scale: Annotated[int, Query(ge=1, le=8, description="nearest-neighbour upscaling, for viewing")] = 1,
) -> Response:
    """The person in `identity` (a crop, or a gallery entry's stored code), rendered in the pose, background and
    light of `pose`, as a PNG."""
    if (identity is None) == (identity_entry_id is None):
        raise HTTPException(422, "give either an identity file or an identity_entry_id, not both or neither")
    if identity_entry_id is not None:
        codes = gallery.codes([identity_entry_id])
    else:
        codes = encoders.identity(reader.read([identity], "identity", "inv_id")["inv_id"])
    noises = encoders.noise(reader.read([pose], "pose", "inv_noise")["inv_noise"])
    image = encoders.render(codes, noises)[0]
    if scale > 1:
        image = image.repeat(scale, axis=1).repeat(scale, axis=2)
    return Response(to_png(image), media_type="image/png")
