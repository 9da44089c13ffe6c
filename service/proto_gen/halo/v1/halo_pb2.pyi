from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JointOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOINT_ORDER_UNSPECIFIED: _ClassVar[JointOrder]
    JOINT_ORDER_MANO: _ClassVar[JointOrder]
    JOINT_ORDER_BIOMECH: _ClassVar[JointOrder]
    JOINT_ORDER_HALO: _ClassVar[JointOrder]

class Handedness(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HANDEDNESS_UNSPECIFIED: _ClassVar[Handedness]
    HANDEDNESS_RIGHT: _ClassVar[Handedness]
    HANDEDNESS_LEFT: _ClassVar[Handedness]

class GraspRank(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRASP_RANK_UNSPECIFIED: _ClassVar[GraspRank]
    GRASP_RANK_NONE: _ClassVar[GraspRank]
    GRASP_RANK_STABILITY: _ClassVar[GraspRank]
JOINT_ORDER_UNSPECIFIED: JointOrder
JOINT_ORDER_MANO: JointOrder
JOINT_ORDER_BIOMECH: JointOrder
JOINT_ORDER_HALO: JointOrder
HANDEDNESS_UNSPECIFIED: Handedness
HANDEDNESS_RIGHT: Handedness
HANDEDNESS_LEFT: Handedness
GRASP_RANK_UNSPECIFIED: GraspRank
GRASP_RANK_NONE: GraspRank
GRASP_RANK_STABILITY: GraspRank

class Hand(_message.Message):
    __slots__ = ("keypoints", "joint_order", "handedness")
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    JOINT_ORDER_FIELD_NUMBER: _ClassVar[int]
    HANDEDNESS_FIELD_NUMBER: _ClassVar[int]
    keypoints: _containers.RepeatedScalarFieldContainer[float]
    joint_order: JointOrder
    handedness: Handedness
    def __init__(self, keypoints: _Optional[_Iterable[float]] = ..., joint_order: _Optional[_Union[JointOrder, str]] = ..., handedness: _Optional[_Union[Handedness, str]] = ...) -> None: ...

class Mesh(_message.Message):
    __slots__ = ("vertices", "faces")
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    vertices: bytes
    faces: bytes
    def __init__(self, vertices: _Optional[bytes] = ..., faces: _Optional[bytes] = ...) -> None: ...

class GenerateMeshRequest(_message.Message):
    __slots__ = ("hands", "resolution")
    HANDS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    hands: _containers.RepeatedCompositeFieldContainer[Hand]
    resolution: int
    def __init__(self, hands: _Optional[_Iterable[_Union[Hand, _Mapping]]] = ..., resolution: _Optional[int] = ...) -> None: ...

class GenerateMeshResponse(_message.Message):
    __slots__ = ("meshes",)
    MESHES_FIELD_NUMBER: _ClassVar[int]
    meshes: _containers.RepeatedCompositeFieldContainer[Mesh]
    def __init__(self, meshes: _Optional[_Iterable[_Union[Mesh, _Mapping]]] = ...) -> None: ...

class QueryOccupancyRequest(_message.Message):
    __slots__ = ("hand", "points")
    HAND_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    hand: Hand
    points: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, hand: _Optional[_Union[Hand, _Mapping]] = ..., points: _Optional[_Iterable[float]] = ...) -> None: ...

class QueryOccupancyResponse(_message.Message):
    __slots__ = ("probabilities",)
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class GraspMetrics(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Grasp(_message.Message):
    __slots__ = ("keypoints", "mesh", "metrics")
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    keypoints: _containers.RepeatedScalarFieldContainer[float]
    mesh: Mesh
    metrics: GraspMetrics
    def __init__(self, keypoints: _Optional[_Iterable[float]] = ..., mesh: _Optional[_Union[Mesh, _Mapping]] = ..., metrics: _Optional[_Union[GraspMetrics, _Mapping]] = ...) -> None: ...

class GenerateGraspsRequest(_message.Message):
    __slots__ = ("object", "num_samples", "seed", "refine", "resolution", "physics", "rank")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    PHYSICS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    object: Mesh
    num_samples: int
    seed: int
    refine: bool
    resolution: int
    physics: bool
    rank: GraspRank
    def __init__(self, object: _Optional[_Union[Mesh, _Mapping]] = ..., num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., refine: _Optional[bool] = ..., resolution: _Optional[int] = ..., physics: _Optional[bool] = ..., rank: _Optional[_Union[GraspRank, str]] = ...) -> None: ...

class GenerateGraspsResponse(_message.Message):
    __slots__ = ("grasps",)
    GRASPS_FIELD_NUMBER: _ClassVar[int]
    grasps: _containers.RepeatedCompositeFieldContainer[Grasp]
    def __init__(self, grasps: _Optional[_Iterable[_Union[Grasp, _Mapping]]] = ...) -> None: ...

class MeshFrame(_message.Message):
    __slots__ = ("frame_id", "hand", "resolution", "smooth")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    HAND_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SMOOTH_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    hand: Hand
    resolution: int
    smooth: int
    def __init__(self, frame_id: _Optional[int] = ..., hand: _Optional[_Union[Hand, _Mapping]] = ..., resolution: _Optional[int] = ..., smooth: _Optional[int] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class MeshFrameReply(_message.Message):
    __slots__ = ("frame_id", "mesh", "normals", "skipped_frames", "server_ms", "seeded", "fallback", "resolution", "error")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    NORMALS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SERVER_MS_FIELD_NUMBER: _ClassVar[int]
    SEEDED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    mesh: Mesh
    normals: bytes
    skipped_frames: int
    server_ms: float
    seeded: bool
    fallback: str
    resolution: int
    error: FrameError
    def __init__(self, frame_id: _Optional[int] = ..., mesh: _Optional[_Union[Mesh, _Mapping]] = ..., normals: _Optional[bytes] = ..., skipped_frames: _Optional[int] = ..., server_ms: _Optional[float] = ..., seeded: _Optional[bool] = ..., fallback: _Optional[str] = ..., resolution: _Optional[int] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ...) -> None: ...
