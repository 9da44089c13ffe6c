"""`halo bench serve` against a real server: counts, statuses and the server's RSS are reported, closed loop
and as a mixed open-loop load; `halo bench mesh` on a chosen device; `halo bench grasps`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from service_helpers import wait_until

from cli.files import load_keypoints
from cli.main import main
from tools.bench_live import stream_frames
from tools.load import format_result, run_bench
from tools.load_mix import format_mix_result, parse_mix, run_mix_bench


def test_bench_drives_both_protocols_and_reports(live_server, hand_keypoints, tmp_path):
    path = tmp_path / "hands.json"
    path.write_text(json.dumps({"keypoints": hand_keypoints[:3].tolist()}))
    hands = load_keypoints(path)
    assert hands.shape == (3, 21, 3)
    answered_before = live_server.metric("halo_requests_total", {"endpoint": "mesh", "protocol": "grpc", "status": "OK"})
    for protocol, ok in (("rest", "200"), ("grpc", "OK")):
        result = run_bench(hands, protocol=protocol, http_url=live_server.http_url, grpc_target=live_server.grpc_target,
                           concurrency=2, duration_s=1.0, resolution=64)
        assert result.completed >= 1 and set(result.statuses) == {ok}
        assert result.statuses[ok] == result.completed
        assert 0 < result.p50_s <= result.p99_s
        assert result.rss_before_bytes > 0 and result.rss_after_bytes > 0
        assert f"{protocol} c=2 res=64" in format_result(result)
    answered = live_server.metric("halo_requests_total", {"endpoint": "mesh", "protocol": "grpc", "status": "OK"})
    assert answered - answered_before == result.completed


def test_bench_grasps_reports_a_calibrated_ratio_per_object(tmp_path, restore_torch_threads):
    from models.grasps.api import SHIPPED_VAE

    if not SHIPPED_VAE.is_file():
        pytest.skip("no shipped grasp checkpoint")
    out = tmp_path / "grasps.json"
    assert main(["bench", "grasps", "--objects", "2", "--samples", "2", "--resolution", "64", "--threads", "1",
                 "--physics", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2 and result["samples"] == 2
    for row in result["rows"]:
        assert row["ratio"] == pytest.approx(row["seconds"] / row["calibration_s"])
        assert 0 < row["sample_s"] + row["physics_s"] + row["mesh_s"] + row["metrics_s"] <= row["seconds"]
        assert row["physics_ratio"] == pytest.approx(row["physics_per_grasp_s"] / row["calibration_s"])
        assert 0 < row["physics_per_grasp_s"] * 2 <= row["seconds"]
    assert min(r["ratio"] for r in result["rows"]) <= result["median_ratio"] <= max(r["ratio"] for r in result["rows"])


def test_parse_mix_normalises_weights_and_names_the_option():
    assert parse_mix("mesh=0.9,grasps=0.1") == pytest.approx({"mesh": 0.9, "grasps": 0.1})
    assert parse_mix("mesh=3, occupancy=1, grasps=0") == pytest.approx({"mesh": 0.75, "occupancy": 0.25})
    for bad in ("mesh=0.9,teleport=0.1", "mesh", "mesh=-1", "mesh=x", "grasps=0", ""):
        with pytest.raises(ValueError, match=r"^--mix: "):
            parse_mix(bad)


def test_mixed_open_loop_bench_reports_every_endpoint(live_server, hand_keypoints):
    if live_server.engine.vae is None:
        pytest.skip("no grasp model loaded")
    endpoints = ("mesh", "occupancy", "grasps")

    def answered() -> dict[str, float]:
        return {e: sum(live_server.metric("halo_requests_total", {"endpoint": e, "protocol": "rest", "status": s})
                       for s in ("200", "503")) for e in endpoints}

    before = answered()
    result = run_mix_bench(hand_keypoints[:4], parse_mix("mesh=0.6,occupancy=0.2,grasps=0.2"), rate_per_s=12,
                           http_url=live_server.http_url, concurrency=4, duration_s=1.5, resolution=64,
                           grasp_samples=1, grasp_refine=False, seed=3)
    assert set(result.endpoints) <= set(endpoints) and "mesh" in result.endpoints
    sent = {e: result.endpoints[e].sent if e in result.endpoints else 0 for e in endpoints}
    # The server counts a request just after its response went out: let the last counts land.
    wait_until(lambda: {e: answered()[e] - before[e] for e in endpoints} == sent, timeout=10)
    for stats in result.endpoints.values():
        assert stats.sent == sum(stats.statuses.values())
        assert set(stats.statuses) <= {"200", "503"}, stats.statuses  # 503 only from a full lane
        assert stats.completed == stats.statuses.get("200", 0)
        if stats.completed:
            assert 0 < stats.p50_s <= stats.p95_s <= stats.p99_s and stats.per_s > 0
    assert result.wall_s >= 1.5
    text = format_mix_result(result)
    assert "mix mesh=0.60,occupancy=0.20,grasps=0.20 at 12/s" in text and "  mesh: " in text


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the benchmark sets the process-wide count


def test_bench_mesh_runs_on_the_chosen_device(tmp_path, restore_torch_threads, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "mesh", "--device", "cpu", "--resolutions", "64", "--batches", "2", "--repeats", "1"]
    assert main([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    ((row),) = result["rows"]
    assert (row["resolution"], row["batch"]) == (64, 2) and row["ms_per_mesh"] > 0
    assert " on cpu, " in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA answers")
def test_bench_mesh_on_cuda_without_a_gpu_is_a_clear_error(restore_torch_threads, capsys):
    assert main(["bench", "mesh", "--device", "cuda", "--resolutions", "64", "--batches", "1"]) == 2
    assert "device: cuda requested but CUDA is not available" in capsys.readouterr().err


def test_live_stream_frames_go_there_and_back_without_a_jump():
    sequence = np.arange(5)[:, None, None] * np.ones((1, 21, 3))
    for offset in (0, 3):
        frames = stream_frames(sequence, passes=2, offset=offset)[:, 0, 0]
        assert len(frames) == 2 * 8 and frames[0] == offset
        assert set(np.abs(np.diff(frames))) == {1.0}  # every step goes to a neighbouring frame, also between passes


def test_bench_stream_through_a_server_reports_calibrated_rows(live_server, hand_keypoints, tmp_path,
                                                               restore_torch_threads, capsys):
    sequence = tmp_path / "sequence.npy"
    np.save(sequence, _tracked(hand_keypoints[0], 6))
    target = ["--url", live_server.http_url, "--grpc-target", live_server.grpc_target, "--sequence", str(sequence),
              "--resolutions", "64", "--threads", "1"]
    out = tmp_path / "live.json"
    meshed_before = live_server.metric("halo_stream_frames_total", {"protocol": "grpc", "outcome": "meshed"})
    assert main(["bench", "stream", "--protocol", "grpc", "--streams", "2", *target, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["protocol"], row["resolution"], row["streams"]) == ("grpc", 64, 2)
    assert row["frames_sent"] == row["frames_meshed"] == 2 * 10 and row["skipped"] == row["errors"] == 0  # lock-step
    assert row["ms_per_frame_ratio"] == pytest.approx(row["ms_per_frame"] / 1000 / row["calibration_s"])
    assert row["p99_ratio"] == pytest.approx(row["p99_ms"] / 1000 / row["calibration_s"])
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["server_p50_ms"] > 0
    assert 0 < row["frames_per_s_min"] <= row["frames_per_s_mean"]
    assert live_server.metric("halo_stream_frames_total", {"protocol": "grpc", "outcome": "meshed"}) - meshed_before == 20
    # On a clock (open loop) the newest frame wins: every frame sent is meshed or reported skipped.
    assert main(["bench", "stream", "--protocol", "websocket", "--streams", "1", "--fps", "400", *target,
                 "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["protocol"] == "websocket" and row["frames_meshed"] + row["skipped"] == row["frames_sent"] == 10
    assert "websocket res  64 x1" in capsys.readouterr().out


def _tracked(keypoints: np.ndarray, frames: int) -> np.ndarray:
    """(21,3) -> (frames,21,3): the hand drifting 1 mm per frame, like a tracked hand holding still."""
    return keypoints[None] + np.arange(frames)[:, None, None] * np.array([0.001, 0.0, 0.0])
