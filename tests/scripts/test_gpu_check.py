"""bench/gpu_check.py, the one script a session with a lent GPU runs: its CPU mode here (the cheap checks,
a tiny real job), the files it writes, and its refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_mode_runs_the_checks_and_writes_json_and_markdown(tmp_path):
    gpu_check = _module()
    checks = "environment,precision,channels_last,device_data,sync_bn,nccl,cifar_job"
    result = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--checks", checks])
    statuses = {name: check["status"] for name, check in result["checks"].items()}
    assert statuses == {**dict.fromkeys(checks.split(","), "ok"), "nccl": "skipped"}, result
    assert result["ok"]
    assert result["checks"]["precision"]["figures"]["fp16_refused_on_cpu"] is True
    job = result["checks"]["cifar_job"]["figures"]
    assert job["resources"]["precision"] == "bf16" and job["resources"]["channels_last"] is True
    assert any(key.endswith("benign_acc") for key in job)
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["checks"].keys() == result["checks"].keys()
    table = (tmp_path / "gpu_check.md").read_text()
    assert "Card: **cpu" in table and "| sync_bn | ok |" in table and "NCCL needs at least 2" in table


def test_a_failing_check_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    gpu_check = _module()

    def broken(device, args):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setitem(gpu_check.CHECKS, "channels_last", broken)
    result = gpu_check.main(["--device", "cpu", "--out", str(tmp_path), "--checks", "channels_last,sync_bn"])
    assert not result["ok"]
    assert result["checks"]["channels_last"]["status"] == "failed"
    assert "no kernel image" in result["checks"]["channels_last"]["error"]
    assert result["checks"]["sync_bn"]["status"] == "ok"
    assert "no kernel image" in (tmp_path / "gpu_check.md").read_text()


def test_past_the_budget_the_remaining_checks_are_skipped(tmp_path):
    result = _module().main(["--device", "cpu", "--out", str(tmp_path), "--checks", "sync_bn", "--budget-s", "-1"])
    assert result["checks"]["sync_bn"]["status"] == "skipped"


@pytest.mark.parametrize("argv", [["--checks", "warp_drive"], ["--device", "cuda"]])
def test_refused_arguments(tmp_path, argv):
    if argv == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit):
        _module().main(
            ["--out", str(tmp_path), "--device", "cpu", *argv]
            if "--device" not in argv
            else ["--out", str(tmp_path), *argv]
        )
