"""The REST API's request and response bodies (pydantic); grasp options come from ``service.inputs``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from models import skeleton
from service.inputs import RESOLUTION_HELP, GraspOptions

Point = Annotated[list[float], Field(min_length=3, max_length=3)]
Triangle = Annotated[list[int], Field(min_length=3, max_length=3)]
Keypoints = Annotated[
    list[Point],
    Field(min_length=21, max_length=21, description="21 x [x, y, z] in metres, in `joint_order`."),
]
JointOrderName = Literal["mano", "mediapipe", "openpose", "biomech", "halo"]
HandName = Literal[skeleton.HANDS]
FormatName = Literal["json", "ply", "obj", "glb"]
OBJECT_FILE_HELP = ".obj, .ply, .stl or .glb file."


class HandIn(BaseModel):
    keypoints: Keypoints
    joint_order: JointOrderName = "mano"
    hand: HandName = "right"


class StreamFrameIn(HandIn):
    """One frame of a live stream (WebSocket ``/stream``); absent options take their defaults, not the last frame's."""

    frame_id: int = Field(ge=0, lt=2**64, description="The client's id for the frame; the reply to it carries it back.")
    resolution: int | None = Field(None, description=RESOLUTION_HELP + " Another than the last frame's restarts the seed.")
    smooth: int | None = Field(None, description="Taubin iterations, 0-50 (default 10; 0: the original surface).")


class MeshRequest(BaseModel):
    """One hand (``keypoints``) or several (``hands``), meshed at ``resolution``."""

    keypoints: Keypoints | None = None
    joint_order: JointOrderName = "mano"
    hand: HandName = "right"
    hands: list[HandIn] | None = Field(None, min_length=1)
    resolution: int | None = Field(None, description=RESOLUTION_HELP)
    format: FormatName | None = Field(None, description="Response format; default from the Accept header, else json.")

    @model_validator(mode="after")
    def _one_form(self) -> MeshRequest:
        if (self.keypoints is None) == (self.hands is None):
            raise ValueError("keypoints: give either `keypoints` (one hand) or `hands` (several), not both")
        return self


class MeshOut(BaseModel):
    vertices: list[Point] = Field(description="N x [x, y, z], metres, keypoint frame.")
    faces: list[Triangle] = Field(description="M x [i, j, k], outward winding.")


class MeshResponse(MeshOut):
    resolution: int


class MeshesResponse(BaseModel):
    meshes: list[MeshOut]
    resolution: int


class OccupancyRequest(HandIn):
    points: list[Point] = Field(min_length=1, description="N x [x, y, z], metres, keypoint frame.")


class OccupancyResponse(BaseModel):
    probabilities: list[float]


class ObjectIn(BaseModel):
    vertices: list[Point] = Field(min_length=3)
    faces: list[Triangle] = Field(min_length=1)


class GraspParams(GraspOptions):
    """A grasp request's parameters besides the object: how many, from which seed, and the options."""

    num_samples: int | None = Field(None, ge=1, description="Grasps to return (server default if absent).")
    seed: int = Field(0, ge=0, lt=2**63)


class GraspRequest(GraspParams):
    object: ObjectIn


class GraspUpload(GraspParams):
    file: bytes = Field(json_schema_extra={"format": "binary"}, description=OBJECT_FILE_HELP)


class ObjectUpload(BaseModel):
    file: bytes = Field(json_schema_extra={"format": "binary"}, description=OBJECT_FILE_HELP)


class GraspOut(BaseModel):
    keypoints: Keypoints
    mesh: MeshOut
    metrics: dict[str, float]


class GraspsResponse(BaseModel):
    grasps: list[GraspOut]


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong; input errors start with the field name.")
    request_id: str | None = None


ERROR_DESCRIPTIONS = {
    401: "Missing or wrong bearer token.",
    413: "Body, upload or object larger than the server's limits.",
    415: "Unsupported content type.",
    422: "Invalid input; `detail` starts with the field name.",
    503: "Queue full, server stopping, or model not available (`Retry-After` if retrying helps).",
    504: "The request's deadline passed before its work started.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of the given error statuses."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


# Bodies the routes read themselves (JSON or multipart), published as components of the schema.
EXTRA_COMPONENTS = {"GraspRequest": GraspRequest, "GraspUpload": GraspUpload, "ObjectUpload": ObjectUpload}
