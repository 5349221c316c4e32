"""/transfer: render the identity of one crop in the pose, background and light of another."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, UploadFile

from service.dependencies import EncodersDep, ReaderDep
from service.errors import error_responses
from service.imaging import to_png

router = APIRouter(tags=["transfer"])

PNG_RESPONSE = {200: {"description": "the rendered image", "content": {"image/png": {}}}}


@router.post(
    "/transfer", response_class=Response, responses={**PNG_RESPONSE, **error_responses(400, 413, 422)}
)
def transfer(
    identity: UploadFile,
    pose: UploadFile,
    encoders: EncodersDep,
    reader: ReaderDep,
    scale: Annotated[int, Query(ge=1, le=8, description="nearest-neighbour upscaling, for viewing")] = 1,
) -> Response:
    """The person in `identity`, rendered in the pose, background and light of `pose`, as a PNG."""
    codes = encoders.identity(reader.read([identity], "identity"))
    noises = encoders.noise(reader.read([pose], "pose"))
    image = encoders.render(codes, noises)[0]
    if scale > 1:
        image = image.repeat(scale, axis=1).repeat(scale, axis=2)
    return Response(to_png(image), media_type="image/png")
