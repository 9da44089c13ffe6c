"""Live streams (gRPC StreamMesh, WebSocket /stream) against real servers on 127.0.0.1 with the real base model:
meshes naming their frames, newest-frame-wins, limits, bad frames, auth, and clean ends on both sides."""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial import cKDTree
from service_helpers import GatedStreams, hand, wait_until

import models
import service.streams as service_streams
from models.grasps.model import load_vae_weights
from models.smoothing import DEFAULT_SMOOTH_ITERATIONS
from models.stream_bench import synthetic_sequence
from service.proto_gen.halo.v1 import halo_pb2, halo_pb2_grpc
from tests.conftest import REPO_ROOT
from tools.client import GrpcClient, HaloError, LiveFrame, LiveSocket, RestClient, live_frames, open_live_stream

PROTOCOLS = ("grpc", "websocket")
MAX_DISTANCE_M = 2e-4  # 0.2 mm, every vertex to the other mesh's nearest vertex, both ways
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def direct_base(base_checkpoint):
    return models.load_base(base_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def sequence() -> np.ndarray:
    """(60,21,3): the project's own open -> fist -> open sequence, metres, mano order."""
    vae, _ = load_vae_weights(REPO_ROOT / "models" / "checkpoints" / "halo_vae.safetensors")
    return synthetic_sequence(vae.skeleton, frames=60)


@pytest.fixture(scope="module")
def guarded_server(base_checkpoint):
    """A server that wants a token and allows two live streams."""
    from conftest import start_server

    server = start_server(base_checkpoint=base_checkpoint, auth_token=TOKEN, max_streams=2, warmup=False)
    yield server
    server.stop()


def on_the_wire(keypoints: np.ndarray, protocol: str) -> np.ndarray:
    """The keypoints as the server reads them: gRPC carries float32, JSON the float64 digits."""
    return keypoints.astype(np.float32).astype(np.float64) if protocol == "grpc" else keypoints


def max_distance(a, b) -> float:
    """Largest distance from a vertex of either mesh to the other mesh's nearest vertex."""
    return max(cKDTree(b.vertices).query(a.vertices)[0].max(), cKDTree(a.vertices).query(b.vertices)[0].max())


def frames_metric(server, protocol: str, outcome: str) -> float:
    return server.metric("halo_stream_frames_total", {"protocol": protocol, "outcome": outcome})


def active(server, protocol: str) -> float:
    return server.metric("halo_streams_active", {"protocol": protocol})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_frame_is_meshed_like_a_single_mesh_and_seeded_by_the_last(live_server, direct_base, sequence, protocol):
    frames = sequence[:5]
    seeded_before = live_server.metric("halo_stream_extractions_total", {"extraction": "seeded"})
    replies = []
    with open_live_stream(protocol, live_server.http_url, live_server.grpc_target) as live:
        for frame in live_frames(frames, first_id=100, resolution=64):  # lock-step: nothing is skipped
            live.send(frame)
            replies.append(live.receive())
    assert [reply.frame_id for reply in replies] == [100, 101, 102, 103, 104]
    assert replies[0].fallback == "start" and all(reply.seeded for reply in replies[1:])
    assert live_server.metric("halo_stream_extractions_total", {"extraction": "seeded"}) - seeded_before == 4
    for reply, keypoints in zip(replies, frames, strict=True):
        assert reply.error is None and reply.skipped_frames == 0 and reply.resolution == 64 and reply.server_ms > 0
        assert reply.mesh.is_watertight
        # Live meshes are smoothed by default: the same keypoints meshed alone with the same smoothing.
        alone = direct_base.mesh(on_the_wire(keypoints, protocol), resolution=64, smooth=DEFAULT_SMOOTH_ITERATIONS)
        assert max_distance(reply.mesh, alone) <= MAX_DISTANCE_M
        cosine = np.einsum("ij,ij->i", reply.mesh.vertex_normals, alone.vertex_normals)
        assert cosine.min() > 0.99  # the normals that travel with the mesh are the mesh's own


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unsmoothed_frames_match_the_mesh_endpoint(live_server, sequence, protocol):
    frames = sequence[10:13]
    with open_live_stream(protocol, live_server.http_url, live_server.grpc_target) as live:
        replies = []
        for frame in live_frames(frames, resolution=64, smooth=0):
            live.send(frame)
            replies.append(live.receive())
    with RestClient(live_server.http_url) as rest:
        for reply, keypoints in zip(replies, frames, strict=True):
            single = rest.mesh(on_the_wire(keypoints, protocol), resolution=64)
            assert reply.mesh.is_watertight
            assert max_distance(reply.mesh, single) <= MAX_DISTANCE_M


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_new_resolution_or_hand_meshes_from_scratch(live_server, sequence, protocol):
    frames = [LiveFrame(0, sequence[0], resolution=64), LiveFrame(1, sequence[1], resolution=64),
              LiveFrame(2, sequence[2], resolution=128), LiveFrame(3, sequence[3], resolution=128),
              LiveFrame(4, sequence[4], resolution=128, hand="left"), LiveFrame(5, sequence[5], resolution=128,
                                                                                hand="left")]
    with open_live_stream(protocol, live_server.http_url, live_server.grpc_target) as live:
        replies = []
        for frame in frames:
            live.send(frame)
            replies.append(live.receive())
    assert [reply.resolution for reply in replies] == [64, 64, 128, 128, 128, 128]
    assert [reply.seeded for reply in replies] == [False, True, False, True, False, True]
    assert replies[2].fallback == replies[4].fallback == "start"
    assert all(reply.mesh.is_watertight for reply in replies)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_newest_frame_wins_while_a_frame_is_meshed(server_factory, sequence, protocol):
    server = server_factory(warmup=False)
    gated = GatedStreams(server.engine.live_meshing)
    server.engine.live_meshing = gated
    frames = list(live_frames(sequence[:10], resolution=64))
    with open_live_stream(protocol, server.http_url, server.grpc_target) as live:
        live.send(frames[0])
        assert gated.entered.wait(30)  # frame 0 is being meshed
        for frame in frames[1:]:
            live.send(frame)
        wait_until(lambda: frames_metric(server, protocol, "received") == 10)
        gated.gate.set()
        first, last = live.receive(), live.receive()
    # Frames 1-8 each waited until a newer one replaced it; the newest (9) is meshed once frame 0 is done.
    assert (first.frame_id, first.skipped_frames) == (0, 8)
    assert (last.frame_id, last.skipped_frames) == (9, 0)
    assert first.mesh.is_watertight and last.mesh.is_watertight
    assert frames_metric(server, protocol, "skipped") == 8
    assert frames_metric(server, protocol, "meshed") == 2


def test_frames_of_streams_waiting_together_are_meshed_in_one_pass(server_factory, sequence):
    server = server_factory(warmup=False, mesh_workers=1)
    gated = GatedStreams(server.engine.live_meshing)
    server.engine.live_meshing = gated
    protocols = ("grpc", "websocket", "grpc")
    opened = [open_live_stream(protocol, server.http_url, server.grpc_target) for protocol in protocols]
    streams = [stream.__enter__() for stream in opened]
    try:
        streams[0].send(LiveFrame(0, sequence[0], resolution=64, smooth=0))
        assert gated.entered.wait(30)  # the only worker holds stream 0's frame
        for index, live in enumerate(streams[1:], start=1):
            live.send(LiveFrame(index, sequence[10 * index], resolution=64, smooth=0))
        wait_until(lambda: server.engine.mesh_lane.depth == 2)
        gated.gate.set()
        replies = [live.receive() for live in streams]
    finally:
        for stream in opened:
            stream.__exit__(None, None, None)
    assert gated.batches == [1, 2]  # the two frames that waited went through the model together
    with RestClient(server.http_url) as rest:
        for index, (reply, protocol) in enumerate(zip(replies, protocols, strict=True)):
            assert reply.frame_id == index and reply.fallback == "start" and reply.mesh.is_watertight
            single = rest.mesh(on_the_wire(sequence[10 * index], protocol), resolution=64)
            assert max_distance(reply.mesh, single) <= MAX_DISTANCE_M


def test_a_lone_frame_split_with_the_helper_thread_gives_the_same_meshes(server_factory, sequence):
    server = server_factory(warmup=False, split_lone_frames=True)
    assert server.engine.live_meshing.helper is not None
    with open_live_stream("grpc", server.http_url, server.grpc_target) as live:
        replies = []
        for frame in live_frames(sequence[:3], resolution=64, smooth=0):
            live.send(frame)
            replies.append(live.receive())
    assert [reply.seeded for reply in replies] == [False, True, True]
    with RestClient(server.http_url) as rest:
        for reply, keypoints in zip(replies, sequence[:3], strict=True):
            single = rest.mesh(on_the_wire(keypoints, "grpc"), resolution=64)
            assert reply.mesh.is_watertight and max_distance(reply.mesh, single) <= MAX_DISTANCE_M


def test_the_helper_thread_is_used_only_while_both_lanes_are_otherwise_idle(monkeypatch, sequence):
    """A grasp job or a second mesh batch holds the other core: the frame is then meshed without the split."""
    helpers_used = []

    def mesh_streams(hands, helper):
        helpers_used.append(helper)
        return [(None,)] * len(hands), {}

    monkeypatch.setattr(service_streams, "mesh_streams", mesh_streams)
    lane, grasp_lane = SimpleNamespace(computing=1), SimpleNamespace(computing=0)
    metrics = SimpleNamespace(observe_mesh_stats=lambda *args: None)
    helper = ThreadPoolExecutor(1)
    meshing = service_streams.LiveMeshing(lane, metrics, helper, grasp_lane)
    stream = SimpleNamespace(stats=SimpleNamespace(last_fallbacks=[""]))
    keypoints = SimpleNamespace(keypoints=sequence[0], joint_order="mano", hand="right")
    frame = SimpleNamespace(stream=stream, frame=SimpleNamespace(hand=keypoints, resolution=64))
    for mesh_batches, grasp_jobs in ((1, 0), (1, 1), (2, 0), (1, 0)):
        lane.computing, grasp_lane.computing = mesh_batches, grasp_jobs
        meshing([frame])
    helper.shutdown()
    assert helpers_used == [helper, None, None, helper]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_fast_client_gets_its_last_frame_meshed_and_every_frame_accounted_for(live_server, sequence, protocol):
    frames = list(live_frames(sequence[:40], resolution=64))
    if protocol == "websocket":
        with LiveSocket(live_server.http_url) as live:
            replies = list(live.stream_meshes(frames))
    else:
        with GrpcClient(live_server.grpc_target) as client:
            replies = list(client.stream_meshes(frames))
    ids = [reply.frame_id for reply in replies]
    assert ids == sorted(set(ids)) and ids[-1] == 39
    assert all(reply.error is None and reply.mesh.is_watertight for reply in replies)
    assert len(replies) + sum(reply.skipped_frames for reply in replies) == 40


def test_streams_beyond_the_limit_are_refused_on_both_protocols(guarded_server, sequence):
    server = guarded_server
    opened = [open_live_stream(protocol, server.http_url, server.grpc_target, TOKEN) for protocol in PROTOCOLS]
    streams = [stream.__enter__() for stream in opened]
    try:
        for live in streams:
            live.send(LiveFrame(0, sequence[0], resolution=64))
            assert live.receive().mesh is not None  # both streams are open
        with pytest.raises(HaloError) as refused, LiveSocket(server.http_url, TOKEN) as third:
            third.receive()
        assert refused.value.status == 1013
        assert refused.value.detail == "streams: all 2 live streams are open; try again later"
        with pytest.raises(HaloError) as refused, GrpcClient(server.grpc_target, TOKEN) as client:
            list(client.stream_meshes(live_frames(sequence[:1])))
        assert refused.value.status == "RESOURCE_EXHAUSTED" and refused.value.detail.startswith("streams: all 2")
        for protocol in PROTOCOLS:
            assert server.metric("halo_streams_refused_total", {"protocol": protocol, "reason": "limit"}) == 1
    finally:
        for stream in opened:
            stream.__exit__(None, None, None)
    wait_until(lambda: active(server, "grpc") + active(server, "websocket") == 0)
    with open_live_stream("grpc", server.http_url, server.grpc_target, TOKEN) as live:  # room again
        live.send(LiveFrame(1, sequence[1], resolution=64))
        assert live.receive().frame_id == 1


def test_a_stream_needs_the_token_when_the_server_has_one(guarded_server, sequence):
    server = guarded_server
    with pytest.raises(HaloError) as refused, LiveSocket(server.http_url) as live:
        live.receive()
    assert (refused.value.status, refused.value.detail) == (1008, "authorization: missing or wrong bearer token")
    with pytest.raises(HaloError) as refused, LiveSocket(server.http_url, "wrong") as live:
        live.receive()
    assert refused.value.status == 1008
    with pytest.raises(HaloError) as refused, GrpcClient(server.grpc_target) as client:
        list(client.stream_meshes(live_frames(sequence[:1])))
    assert refused.value.status == "UNAUTHENTICATED"
    assert server.metric("halo_streams_refused_total", {"protocol": "websocket", "reason": "unauthenticated"}) == 2
    assert server.metric("halo_streams_refused_total", {"protocol": "grpc", "reason": "unauthenticated"}) == 1
    # The header (any client) or ?token= (browsers cannot set headers on a WebSocket).
    for live in (LiveSocket(server.http_url, TOKEN), LiveSocket(server.http_url, TOKEN, token_in_query=True)):
        with live:
            live.send(LiveFrame(7, sequence[0], resolution=64))
            assert live.receive().frame_id == 7


def _bad_frames(keypoints: np.ndarray) -> list[tuple[LiveFrame, str]]:
    degenerate = keypoints.copy()
    degenerate[10] = degenerate[9]
    return [
        (LiveFrame(1, keypoints * 1000, resolution=64), "keypoints"),
        (LiveFrame(2, degenerate, resolution=64), "keypoints"),
        (LiveFrame(3, keypoints, resolution=100), "resolution: 100 is not one of [64, 128]"),
        (LiveFrame(4, keypoints, resolution=64, smooth=51), "smooth: 51 is not between 0 and 50"),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_frames_get_an_error_naming_the_field_and_the_stream_goes_on(live_server, sequence, protocol):
    bad = _bad_frames(sequence[0])
    field_prefix = "hand." if protocol == "grpc" else ""
    status = "INVALID_ARGUMENT" if protocol == "grpc" else 422
    rejected_before = frames_metric(live_server, protocol, "rejected")
    with open_live_stream(protocol, live_server.http_url, live_server.grpc_target) as live:
        for frame, field in bad:
            live.send(frame)
            reply = live.receive()
            assert reply.frame_id == frame.frame_id and reply.mesh is None
            assert reply.error.status == status
            expected = field_prefix + field if field == "keypoints" else field
            assert reply.error.detail.startswith(expected), reply.error.detail
        live.send(LiveFrame(5, sequence[0], resolution=64))
        reply = live.receive()
        assert reply.frame_id == 5 and reply.error is None and reply.mesh.is_watertight
    assert frames_metric(live_server, protocol, "rejected") - rejected_before == len(bad)


def test_websocket_messages_that_are_no_frame_are_answered_by_field(live_server, sequence):
    keypoints = str(sequence[0].tolist())
    with LiveSocket(live_server.http_url) as live:
        for text, frame_id, detail in (
            ("not json", None, "frame: not valid JSON"),
            ('{"keypoints": ' + keypoints + "}", None, "frame_id: Field required"),
            ('{"frame_id": -1, "keypoints": ' + keypoints + "}", None, "frame_id: Input should be greater than"),
            ('{"frame_id": 9, "keypoints": 3}', 9, "keypoints: Input should be a valid list"),
            ('{"frame_id": 10, "keypoints": [[0, 0, 0]]}', 10, "keypoints: List should have at least 21 items"),
            ('{"frame_id": 11, "hand": "middle", "keypoints": ' + keypoints + "}", 11, "hand: Input should be"),
        ):
            live.connection.send(text)
            reply = live.receive()
            assert reply.frame_id == frame_id and reply.error.status == 422
            assert reply.error.detail.startswith(detail), reply.error.detail
        live.connection.send(b"\x00binary")
        assert live.receive().error.detail.startswith("frame: expected a JSON text message")
        live.send(LiveFrame(12, sequence[0], resolution=64))
        assert live.receive().mesh.is_watertight


def test_json_encoding_carries_the_same_mesh_as_base64(live_server, sequence):
    meshes = []
    for encoding in ("json", "base64"):
        with LiveSocket(live_server.http_url, encoding=encoding) as live:
            live.send(LiveFrame(0, sequence[20], resolution=64))
            meshes.append(live.receive().mesh)
    np.testing.assert_array_equal(meshes[0].faces, meshes[1].faces)
    np.testing.assert_allclose(meshes[0].vertices, meshes[1].vertices, atol=1e-7)  # 0.1 um JSON rounding
    np.testing.assert_allclose(meshes[0].vertex_normals, meshes[1].vertex_normals, atol=1e-4)


def test_clients_leaving_free_their_streams_without_error_logs(live_server, sequence, caplog):
    caplog.set_level(logging.WARNING)
    frame = LiveFrame(0, sequence[0], resolution=64)
    with LiveSocket(live_server.http_url) as live:  # a WebSocket closed by the client
        live.send(frame)
        live.receive()
        assert active(live_server, "websocket") == 1
    wait_until(lambda: active(live_server, "websocket") == 0)
    live = LiveSocket(live_server.http_url)  # a WebSocket whose connection drops without a close handshake
    live.send(frame)
    live.receive()
    live.connection.socket.shutdown(socket.SHUT_RDWR)
    wait_until(lambda: active(live_server, "websocket") == 0)
    live.close()
    with GrpcClient(live_server.grpc_target) as client:  # a gRPC stream the client cancels while it is open
        keep_open = threading.Event()
        call = halo_pb2_grpc.HaloServiceStub(client.channel).StreamMesh(_frames_until(sequence[0], keep_open))
        assert next(call).HasField("mesh")
        assert active(live_server, "grpc") == 1
        call.cancel()
        wait_until(lambda: active(live_server, "grpc") == 0)
        keep_open.set()
    with GrpcClient(live_server.grpc_target) as client:  # a gRPC stream that ends when the client's frames do
        replies = list(client.stream_meshes([frame]))
    assert [reply.frame_id for reply in replies] == [0]
    wait_until(lambda: active(live_server, "grpc") == 0)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def _frames_until(keypoints: np.ndarray, stop: threading.Event):
    """One MeshFrame, then nothing until ``stop`` (a client that keeps its stream open)."""
    yield halo_pb2.MeshFrame(frame_id=0, hand=hand(keypoints), resolution=64)
    stop.wait(60)


def test_shutdown_closes_open_streams_cleanly(base_checkpoint, sequence, caplog):
    from conftest import start_server

    caplog.set_level(logging.WARNING)
    server = start_server(base_checkpoint=base_checkpoint, warmup=False)
    frame = LiveFrame(0, sequence[0], resolution=64)
    streams = {protocol: open_live_stream(protocol, server.http_url, server.grpc_target) for protocol in PROTOCOLS}
    lives = {protocol: stream.__enter__() for protocol, stream in streams.items()}
    try:
        for live in lives.values():
            live.send(frame)
            assert live.receive().mesh is not None
        with ThreadPoolExecutor(1) as pool:
            stopping = pool.submit(server.stop)
            ends = {}
            for protocol, live in lives.items():
                with pytest.raises(HaloError) as ended:
                    live.receive()
                ends[protocol] = (ended.value.status, ended.value.detail)
            stopping.result(120)
    finally:
        for stream in streams.values():
            stream.__exit__(None, None, None)
    assert ends == {"websocket": (1001, "server shutting down"), "grpc": ("UNAVAILABLE", "server shutting down")}
    assert server.metric("halo_streams_active", {"protocol": "grpc"}) == 0
    assert server.metric("halo_streams_active", {"protocol": "websocket"}) == 0
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
