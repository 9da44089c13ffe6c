"""A healthy start of `halo serve`, as an operator sees it: its log and its exit on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

from tests.conftest import REPO_ROOT, SHIPPED_BASE

SHIPPED_VAE = REPO_ROOT / "models" / "checkpoints" / "halo_vae.safetensors"


def test_a_healthy_start_logs_nothing_at_warning_level_or_above():
    assert SHIPPED_BASE.is_file() and SHIPPED_VAE.is_file(), "the shipped checkpoints are part of the repository"
    command = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--http-port", "0",
               "--grpc-port", "0", "--device", "cpu", "--log-format", "json", "--log-level", "info"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read_log() -> None:
        for line in process.stderr:
            lines.append(line)
            if '"message": "ready"' in line:
                ready.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        assert ready.wait(240), "server did not report ready:\n" + "".join(lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    reader.join(10)

    records = [json.loads(line) for line in lines]  # every line is one JSON record: nothing unstructured
    loud = [record for record in records if record["level"] not in ("debug", "info")]
    assert loud == []
    loaded = {record["model"]: record for record in records if record["message"] == "model loaded"}
    assert set(loaded) == {"base", "vae"}
    assert all(record["checkpoint"] and record["device"] == "cpu" for record in loaded.values())
    ready_record = next(record for record in records if record["message"] == "ready")
    assert ready_record["models"] == {"base": True, "vae": True}
    assert records[-1]["message"] == "stopped"
