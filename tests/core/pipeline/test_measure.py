"""Inference measurements: parameter and MAC counts against known answers, CPU peak memory against a
hand count, and one dense-vs-variant comparison end to end (tiny, few repeats)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.io.export_onnx import export_onnx
from core.pipeline.measure import (
    NOT_MEASURABLE,
    _median_ci_ranks,
    compare_to_dense,
    count_macs,
    count_nonzero_params,
    count_params,
    median_seconds,
    peak_memory_bytes,
    sparse_macs,
    speedup_entry,
    speedup_text,
    time_interleaved,
)
from core.pruning.masked import convert_to_masked, set_keep_fraction
from core.pruning.structured import ChannelPruning, rebuild_pruned


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


def test_parameter_counts_ignore_scores_and_count_nonzeros():
    model = convert_to_masked(conv_net())
    dense = count_params(conv_net())
    assert count_params(model) == dense == 3 * 8 * 9 + 8 * 8 * 9 + 4 * 8 + 512 * 10 + 10
    set_keep_fraction(model, 0.5)
    weights = 3 * 8 * 9 + 8 * 8 * 9 + 512 * 10
    kept = sum(n - int((1 - 0.5) * n) for n in (3 * 8 * 9, 8 * 8 * 9, 512 * 10))
    others = sum(
        int(p.count_nonzero()) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    ) + int(model[-1].bias.count_nonzero())
    assert count_nonzero_params(model) == kept + others
    assert count_nonzero_params(model) < count_params(model) - weights // 3


def test_macs_of_a_conv_net():
    x = torch.rand(1, 3, 8, 8)
    model = conv_net()
    conv_macs = 8 * 8 * 8 * (3 * 9) + 8 * 8 * 8 * (8 * 9)
    assert sparse_macs(model, x) == conv_macs + 512 * 10
    assert count_macs(model, x) >= conv_macs + 512 * 10  # Torch-Pruning also counts BN/ReLU/bias ops
    masked = convert_to_masked(conv_net())
    set_keep_fraction(masked, 0.25)
    assert count_macs(masked, x) == count_macs(model, x)  # unstructured: same shapes
    assert sparse_macs(masked, x) < 0.3 * sparse_macs(model, x)


def test_channel_pruning_cuts_macs_quadratically():
    model = convert_to_masked(conv_net()).eval()
    x = torch.rand(1, 3, 8, 8)
    cp = ChannelPruning(model, x)
    cp.set_keep(0.5)
    cp.refresh(model)
    small, _ = rebuild_pruned(model, x)
    conv_small = 8 * 8 * 4 * 27 + 8 * 8 * 4 * 4 * 9
    assert sparse_macs(small, x) == conv_small + 256 * 10
    assert count_params(small) < count_params(model) / 2


def test_cpu_peak_memory_counts_live_tensors():
    mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    weights = sum(p.numel() * 4 for p in mlp.parameters())
    # input (4x32), then the first layer's output and the ReLU's output are live together
    assert peak_memory_bytes(mlp, 4, (32,)) == weights + 4 * (32 + 64 + 64) * 4
    assert peak_memory_bytes(mlp, 8, (32,)) == weights + 8 * (32 + 64 + 64) * 4


def test_median_seconds_times_each_function():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1

        return fn

    times = median_seconds({"a": make("a"), "b": make("b")}, repeats=4, warmup=1, min_sample_s=0.0)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    assert calls["a"] == calls["b"] == 1 + 1 + 4


def test_compare_to_dense_reports_ratios(tmp_path):
    dense = convert_to_masked(conv_net()).eval()
    x = torch.rand(1, 3, 8, 8)
    variant = convert_to_masked(conv_net()).eval()
    cp = ChannelPruning(variant, x)
    cp.set_keep(0.25)
    cp.refresh(variant)
    small, _ = rebuild_pruned(variant, x)
    export_onnx(dense, tmp_path / "d.onnx", x, exporter="torchscript")
    export_onnx(small, tmp_path / "v.onnx", x, exporter="torchscript")
    out = compare_to_dense(
        dense,
        small,
        (3, 8, 8),
        dense_onnx=str(tmp_path / "d.onnx"),
        variant_onnx=str(tmp_path / "v.onnx"),
        batches=(1, 4),
        repeats=3,
        warmup=1,
        threads=1,
    )
    assert out["params"]["ratio"] < 0.5 and out["macs"]["ratio"] < 0.5
    assert set(out["latency"]) == {"torch_cpu_b1", "torch_cpu_b4", "ort_cpu_b1", "ort_cpu_b4"}
    for entry in out["latency"].values():
        assert entry["dense"] > 0 and entry["variant"] > 0
        lo, hi = entry["speedup_ci95"]
        assert lo <= entry["speedup"] <= hi and "ratio" not in entry  # one convention: dense / variant
        assert entry["dense_iqr"][0] <= entry["dense"] <= entry["dense_iqr"][1]
    assert out["peak_memory"]["batch"] == 4 and out["peak_memory"]["ratio"] < 1
    assert "peak_memory" in out["method"]


def test_the_median_interval_has_the_sign_test_ranks():
    # Binomial(15, 1/2): P(X <= 3) = 0.0176 <= 0.025 < P(X <= 4), so the 4th and 12th order statistics.
    assert _median_ci_ranks(15) == (3, 11)
    assert _median_ci_ranks(5) == (0, 4)  # too few samples for 95%: the whole range
    lo, hi = _median_ci_ranks(101)
    assert (lo, hi) == (40, 60)


def _timed(samples):
    return {
        "median": sorted(samples)[len(samples) // 2],
        "q1": min(samples),
        "q3": max(samples),
        "samples": samples,
        "below_resolution": False,
    }


def test_speedup_is_claimed_only_when_its_interval_clears_the_noise():
    dense = _timed([2.0e-3 + i * 1e-6 for i in range(15)])
    twice_as_fast = speedup_entry(dense, _timed([1.0e-3 + i * 1e-6 for i in range(15)]))
    assert twice_as_fast["measurable"] and twice_as_fast["verdict"] == "faster"
    assert twice_as_fast["speedup"] == pytest.approx(2.0, rel=0.01)
    assert speedup_text(twice_as_fast).startswith("speed-up 1.99x (95% ")
    # ratios straddling 1 (noise): no speed-up is printed, whatever the median says
    noisy = speedup_entry(dense, _timed([(2.0e-3 + i * 1e-6) * (0.7 if i % 2 else 1.4) for i in range(15)]))
    assert not noisy["measurable"] and noisy["verdict"] == NOT_MEASURABLE
    assert speedup_text(noisy).startswith(NOT_MEASURABLE) and "speed-up" not in speedup_text(noisy).split("(")[0]
    below = speedup_entry(dense, {**_timed([1e-3] * 15), "below_resolution": True})
    assert not below["measurable"]


def test_two_identical_tiny_networks_are_not_measurable_rather_than_a_speedup():
    # The report used to print "speedup 0.0279" and "speedup 66.1" for two identical 90%-sparse
    # networks; the same network timed against itself must now read "not measurable at this size".
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.rand(1, 8)

    def fwd():
        with torch.inference_mode():
            return net(x)

    timed = time_interleaved({"dense": fwd, "variant": fwd}, repeats=15, warmup=2, min_sample_s=0.005)
    entry = speedup_entry(timed["dense"], timed["variant"])
    assert entry["verdict"] == NOT_MEASURABLE, entry
    assert entry["samples"] == 15 and all(t["calls"] >= 1 for t in timed.values())
