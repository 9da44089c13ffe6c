"""`halo bench serve` against a real server: counts, statuses and the server's RSS are reported."""

from __future__ import annotations

import json

from service.bench import format_result, load_keypoints, run_bench


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


def test_bench_grasps_reports_a_calibrated_ratio_per_object(tmp_path):
    import pytest

    from models.grasps.api import SHIPPED_VAE
    from service.cli import main

    if not SHIPPED_VAE.is_file():
        pytest.skip("no shipped grasp checkpoint")
    out = tmp_path / "grasps.json"
    assert main(["bench", "grasps", "--objects", "2", "--samples", "2", "--resolution", "64", "--threads", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2 and result["samples"] == 2
    for row in result["rows"]:
        assert row["ratio"] == pytest.approx(row["seconds"] / row["calibration_s"])
        assert 0 < row["sample_s"] + row["mesh_s"] + row["metrics_s"] <= row["seconds"]
    assert min(r["ratio"] for r in result["rows"]) <= result["median_ratio"] <= max(r["ratio"] for r in result["rows"])
