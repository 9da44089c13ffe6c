"""`halo bench serve` against a real server: counts, statuses and the server's RSS are reported; `halo bench
mesh` on a chosen device."""

from __future__ import annotations

import json

import pytest
import torch

from service.bench import format_result, load_keypoints, run_bench
from service.cli import main


def test_bench_drives_both_protocols_and_reports(live_server, reference_keypoints, tmp_path):
    path = tmp_path / "hands.json"
    path.write_text(json.dumps({"keypoints": reference_keypoints[:3].tolist()}))
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
