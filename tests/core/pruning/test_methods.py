"""Issue 9 wired into the pipeline: global and learned allocation, channel granularity, ONNX exports and
inference costs, end to end on real digits (mnist5k, tiny), and the combinations refused at submission."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.callbacks import RunCallbacks
from core.data.datasets import build_datasets
from core.errors import CoreError, RunCanceled
from core.io import checkpoint as ckpt
from core.io.export import load_compressed, load_compressed_model
from core.io.export_channel import load_channel_pruned
from core.io.export_onnx import check_onnx_parity
from core.pipeline.measure import count_params
from core.pipeline.plan import plan_steps
from core.pipeline.preflight import preflight
from core.pipeline.runner import build_network, run_job
from core.pruning.masked import kept_count, masked_layers
from core.spec import load_spec
from tests.core.test_spec_options import old_flat_form

BASE = {
    "seed": 2,
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 64, "max_test_samples": 32, "batch_size": 32},
    "objective": {"type": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 1},
    "pruning": {"methods": ["hydra"], "k": [0.05]},
    "stages": {
        "pretrain": {"epochs": 1, "lr": 0.05},
        "prune": {"epochs": 1, "lr": 0.1},
        "finetune": {"epochs": 1, "lr": 0.01},
    },
    "evaluation": {
        "pgd_steps": 1,
        "val_pgd_steps": 1,
        "val_max_samples": 16,
        "autoattack": False,
        "pgd_smooth_relu": False,
        "measure_latency": False,
        "measure_batch_sizes": [1, 4],
        "measure_repeats": 1,
        "measure_warmup": 1,
    },
    "export": {"formats": ["compressed", "dense", "onnx"]},
}


def spec_of(**patch):
    data = json.loads(json.dumps(BASE))
    for key, value in patch.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return load_spec(data)


class Recorder(RunCallbacks):
    def __init__(self, cancel_after=None):
        self.batches, self.cancel_after = 0, cancel_after

    def on_progress(self, **kw):
        self.batches += 1

    def should_cancel(self):
        return self.cancel_after is not None and self.batches >= self.cancel_after


def test_split(spec):
    _, test_ds, _ = build_datasets(spec.dataset, spec.seed)
    x = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    return x, torch.as_tensor([int(test_ds[i][1]) for i in range(len(test_ds))])


test_split.__test__ = False  # a helper, not a test


def final_model(spec, out):
    """The masked network of the last variant the run trained, from its final checkpoint."""
    model = build_network(spec, {"num_classes": 10})
    model.load_state_dict(ckpt.load_checkpoint(out / "checkpoint.pt")["model"])
    return model.eval()


# ----------------------------------------------------------------------------- refused at submission
@pytest.mark.parametrize(
    "pruning, stages, field",
    [
        ({"methods": ["lwm"], "allocation": "learned"}, None, "pruning.allocation"),  # lwm trains no scores
        ({"methods": ["hydra", "lwm"], "allocation": "learned"}, None, "pruning.allocation"),
        ({"allocation": "global", "granularity": "channel"}, None, "pruning.allocation"),
        # learned channel rates exist under the MAC budget only (tests/core/pruning/test_channel_budget.py)
        ({"allocation": "learned", "granularity": "channel"}, None, "pruning.budget"),
        ({"allocation": "learned"}, {"prune": None}, "pruning.allocation"),  # nothing trains the rates
        ({"granularity": "2:4"}, None, "pruning.granularity"),
        ({"allocation": "sideways"}, None, "pruning.allocation"),
        ({"allocation": "global", "global_min_per_layer": -1}, None, "pruning.global_min_per_layer"),
        ({"allocation": "learned", "learned": {"tau": 0}}, None, "pruning.learned.tau"),
        ({"allocation": "learned", "k": [0.1, 1.0]}, None, "pruning.k"),  # nothing to allocate at k = 1
    ],
)
def test_bad_combinations_are_refused_naming_the_field(pruning, stages, field):
    patch = {"pruning": pruning} if stages is None else {"pruning": pruning, "stages": stages}
    with pytest.raises(CoreError) as err:
        spec_of(**patch)
    assert err.value.field == field, err.value


def test_good_combinations_pass_and_default_to_hydra_as_published():
    spec = spec_of()
    assert (spec.pruning.allocation, spec.pruning.granularity) == ("uniform", "unstructured")
    # by default every network ships as a checked ONNX graph and is timed against the dense one
    assert load_spec({}).export.formats == ["compressed", "dense", "onnx"] and load_spec({}).evaluation.measure_latency
    for pruning in (
        {"methods": ["hydra", "lwm"], "allocation": "global"},
        {"methods": ["hydra"], "allocation": "learned", "learned": {"gamma": 3.0}},
        {"methods": ["hydra", "lwm"], "granularity": "channel"},
    ):
        spec_of(pruning=pruning)


def test_preflight_refuses_an_architecture_channel_pruning_cannot_rebuild():
    grouped = spec_of(model={"arch": "torchvision:regnet_x_400mf"}, dataset={"name": "cifar10"})
    assert preflight(grouped) is None  # fine at unstructured granularity
    channel = load_spec({**grouped.model_dump(mode="json"), "pruning": {"granularity": "channel"}})
    with pytest.raises(CoreError) as err:
        preflight(channel)
    assert err.value.field == "pruning.granularity" and "grouped ones" in err.value.message
    assert preflight(spec_of(pruning={"granularity": "channel", "k": [0.5]})) is None


def test_preflight_refuses_a_budget_too_small_for_the_layers():
    # cnn_small_mnist: 4 layers, 166,248 weights; k = 1e-5 keeps 2
    for pruning in ({"allocation": "learned", "k": [0.1, 1e-5]}, {"allocation": "global", "k": [1e-4]}):
        assert preflight(spec_of(pruning={**pruning, "k": [0.1]})) is None
        with pytest.raises(CoreError) as err:
            preflight(spec_of(pruning={**pruning, "global_min_per_layer": 10}))
        assert err.value.field == "pruning.k" and err.value.code == "invalid_k"


# ----------------------------------------------------------------------------- learned allocation
LEARNED = {"allocation": "learned", "learned": {"lr": 0.05}}
LEARNED_STAGES = {"prune": {"epochs": 2, "lr": 0.1}}


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("learned")
    spec = spec_of(pruning=LEARNED, stages=LEARNED_STAGES)
    return spec, out, run_job(spec, out)


def test_learned_allocation_meets_the_global_budget_in_the_exported_network(learned_run):
    spec, out, report = learned_run
    state, _ = load_compressed(out / "hydra_k0.05.compressed.safetensors")
    weights = {k: v for k, v in state.items() if k.endswith(".weight") and v.dim() > 1}
    total = sum(v.numel() for v in weights.values())
    kept = sum(int(v.count_nonzero()) for v in weights.values())
    assert abs(kept - kept_count(total, 0.05)) <= 0.001 * total  # within 0.1% of the weights (exact here)
    variant = report["variants"]["hydra_k0.05"]
    alloc = variant["allocation"]
    assert alloc["allocation"] == "learned" and alloc["total"]["kept"] == kept
    rates = [layer["rate"] for layer in alloc["layers"].values()]
    assert len(rates) == 4 and len(set(rates)) > 1  # a per-layer allocation, not one rate for all
    assert (out / "layer_rates.png").exists() and "layer_rates.png" in report["artifacts"]
    md = (out / "report.md").read_text()
    assert "Per-layer keep rates (learned allocation)" in md and "Inference cost against the dense network" in md
    inference = variant["inference"]
    assert inference["nonzero_params"]["ratio"] < 0.1 and inference["latency"] == {}
    assert inference["peak_memory"]["batch"] == 4
    assert variant["checks"]["onnx_parity"]["details"]["ok"] and (out / "hydra_k0.05.onnx").exists()
    assert "## Inference cost" in (out / "hydra_k0.05.model_card.md").read_text()


def test_a_learned_job_resumed_mid_prune_gives_the_same_report(learned_run, tmp_path):
    spec, _, report = learned_run
    # 2 batches an epoch: pretrain 2, prune epoch 1 (checkpoint), stop inside prune epoch 2
    with pytest.raises(RunCanceled):
        run_job(spec, tmp_path, Recorder(cancel_after=5))
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    step = plan_steps(spec)[saved["cursor"][0]]
    assert step.kind == "prune" and saved["cursor"][1] == 1
    assert saved["pruning"]["kind"] == "learned" and "_extra_state" in saved["pruning"]["learned"]
    resumed = run_job(spec, tmp_path, Recorder(), resume=True)
    assert resumed["comparison"] == report["comparison"]
    for name, variant in report["variants"].items():
        again = resumed["variants"][name]
        assert again["artifacts"]["compressed"]["sha256"] == variant["artifacts"]["compressed"]["sha256"], name
        assert again["artifacts"]["onnx"]["sha256"] == variant["artifacts"]["onnx"]["sha256"], name
        assert again.get("allocation") == variant.get("allocation")
        assert again["metrics"] == variant["metrics"]


def test_a_checkpoint_whose_spec_has_the_old_flat_options_resumes(learned_run, tmp_path):
    """A checkpoint written before the options were nested stores ``learned_lr`` etc. in its spec JSON:
    the resume identity check reads it as the same spec, and the run finishes as before."""
    spec, _, report = learned_run
    with pytest.raises(RunCanceled):
        run_job(spec, tmp_path, Recorder(cancel_after=5))
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    old = old_flat_form(json.loads(saved["spec"]))
    assert old["pruning"]["learned_lr"] == 0.05 and "learned" not in old["pruning"]
    ckpt.save_checkpoint(tmp_path / "checkpoint.pt", {**saved, "spec": json.dumps(old)})
    resumed = run_job(spec, tmp_path, Recorder(), resume=True)
    assert resumed["comparison"] == report["comparison"]
    for name, variant in report["variants"].items():
        assert resumed["variants"][name]["metrics"] == variant["metrics"], name


# ----------------------------------------------------------------------------- global allocation
def brute_force_global(scores: list[torch.Tensor], k: float, reserve: int) -> list[torch.Tensor]:
    """Each layer's best ``reserve`` scores, then the best of all others up to kept_count(N, k)."""
    flat = [s.abs().flatten() for s in scores]
    total = sum(f.numel() for f in flat)
    chosen = [torch.zeros(f.numel(), dtype=torch.bool) for f in flat]
    for c, f in zip(chosen, flat):
        c[torch.argsort(f, descending=True)[:reserve]] = True
    rest = torch.cat([torch.where(c, torch.full_like(f, -1.0), f) for c, f in zip(chosen, flat)])
    extra = torch.zeros(total, dtype=torch.bool)
    extra[torch.argsort(rest, descending=True)[: kept_count(total, k) - reserve * len(flat)]] = True
    out, offset = [], 0
    for c, s in zip(chosen, scores):
        out.append((c | extra[offset : offset + c.numel()]).view_as(s))
        offset += c.numel()
    return out


def test_global_allocation_is_the_brute_force_top_k_after_the_final_refresh(tmp_path):
    # lwm first, so the final checkpoint holds hydra's network (scores and masks after its last step)
    spec = spec_of(pruning={"methods": ["lwm", "hydra"], "allocation": "global"}, stages={"finetune": None})
    report = run_job(spec, tmp_path)
    model = final_model(spec, tmp_path)
    layers = masked_layers(model)
    expected = brute_force_global([layer.scores.detach() for _, layer in layers], 0.05, 1)
    hydra, _ = load_compressed(tmp_path / "hydra_k0.05.compressed.safetensors")
    for (name, layer), want in zip(layers, expected):
        assert torch.equal(layer.mask.bool(), want), name
        assert torch.equal(hydra[name.removeprefix("net.") + ".weight"] != 0, want), name
    # LWM under global allocation: one top-k of |w| of the pretrained network over all layers
    dense, _ = load_compressed(tmp_path / "dense.compressed.safetensors")
    lwm, _ = load_compressed(tmp_path / "lwm_k0.05.compressed.safetensors")
    keys = [name.removeprefix("net.") + ".weight" for name, _ in layers]
    for key, want in zip(keys, brute_force_global([dense[key] for key in keys], 0.05, 1)):
        assert torch.equal(lwm[key] != 0, want), key
    rates = {n: a["allocation"]["layers"] for n, a in report["variants"].items() if a.get("allocation")}
    assert set(rates) == {"hydra_k0.05", "lwm_k0.05"}
    assert len({round(r["rate"], 6) for r in rates["lwm_k0.05"].values()}) > 1  # not uniform
    assert "Per-layer keep rates (global allocation)" in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------------------- channel granularity
@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("channel")
    evaluation = {**BASE["evaluation"], "measure_latency": True}
    spec = spec_of(
        pruning={"methods": ["lwm", "hydra"], "k": [0.5], "granularity": "channel"},
        stages={"prune": {"epochs": 2, "lr": 0.1}},
        evaluation=evaluation,
    )
    return spec, out, run_job(spec, out)


def test_a_channel_job_exports_a_smaller_network_with_the_masked_logits(channel_run):
    spec, out, report = channel_run
    variant = report["variants"]["hydra_k0.5"]
    assert variant["evaluated"].endswith("hydra_k0.5.channel.safetensors")
    small = load_channel_pruned(out / "hydra_k0.5.channel.safetensors")
    masked = final_model(spec, out)  # hydra's, trained last
    assert count_params(small) < 0.5 * count_params(masked)
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in small.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    x, y = test_split(spec)
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x), atol=1e-5, rtol=0)
        full = load_compressed_model(out / "hydra_k0.5.compressed.safetensors").eval()  # same function, full width
        torch.testing.assert_close(small(x), full(x), atol=1e-5, rtol=0)
    assert check_onnx_parity(out / "hydra_k0.5.onnx", small, x) <= 1e-4
    assert variant["checks"]["onnx_parity"]["details"]["ok"] and not variant["checks"]["onnx_parity"]["flagged"]
    with torch.no_grad():
        accuracy = (small(x).argmax(1) == y).float().mean().item()
    assert accuracy == pytest.approx(variant["metrics"]["benign_acc"], abs=1e-6)
    sp = variant["sparsity"]
    assert sp["stored_params"] == sp["kept_params"] < sp["prunable_params"]
    assert variant["channels"]["net.0"] == {"channels": 16, "kept": 8}
    cost = variant["inference"]
    assert cost["params"]["ratio"] < 0.5 and cost["macs"]["ratio"] < 0.5
    assert set(cost["latency"]) == {"torch_cpu_b1", "torch_cpu_b4", "ort_cpu_b1", "ort_cpu_b4"}
    assert "load_channel_pruned" in (out / "hydra_k0.5.model_card.md").read_text()


def test_lwm_at_channel_granularity_is_l1_filter_pruning(channel_run):
    spec, out, _ = channel_run
    dense, _ = load_compressed(out / "dense.compressed.safetensors")
    lwm, _ = load_compressed(out / "lwm_k0.5.compressed.safetensors")
    l1 = dense["0.weight"].abs().flatten(1).sum(1)  # the first conv's 16 filters
    kept = lwm["0.weight"].flatten(1).ne(0).any(1)
    assert torch.equal(kept, torch.zeros(16, dtype=torch.bool).index_fill_(0, l1.topk(8).indices, True))


def test_a_channel_job_resumed_mid_prune_gives_the_same_networks(channel_run, tmp_path):
    spec, _, report = channel_run
    # batches: pretrain 2, lwm finetune 2, hydra prune epoch 1 (checkpoint) 2, stop inside prune epoch 2
    with pytest.raises(RunCanceled):
        run_job(spec, tmp_path, Recorder(cancel_after=7))
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert plan_steps(spec)[saved["cursor"][0]].kind == "prune" and saved["cursor"][1] == 1
    assert saved["pruning"]["kind"] == "channel" and "scores.0" in saved["pruning"]["channels"]
    resumed = run_job(spec, tmp_path, Recorder(), resume=True)
    assert resumed["comparison"] == report["comparison"]
    for name, variant in report["variants"].items():
        for fmt in ("compressed", "channel", "onnx"):
            if fmt in variant["artifacts"]:
                assert resumed["variants"][name]["artifacts"][fmt]["sha256"] == variant["artifacts"][fmt]["sha256"]


# ----------------------------------------------------------------------------- ONNX export failures
def test_an_onnx_graph_that_disagrees_is_reported_and_not_shipped(tmp_path, monkeypatch):
    from core.io import export_onnx as onnx_mod
    from core.models.zoo import create_model
    from core.pipeline.exporting import _export_onnx
    from core.pipeline.plan import Step

    def disagree(path, model, inputs, *, atol=1e-4):
        raise CoreError("onnx_mismatch", "export.formats", "the ONNX export differs from PyTorch by 0.5 (> 0.0001)")

    monkeypatch.setattr(onnx_mod, "check_onnx_parity", disagree)
    artifacts, seen = {}, []
    check = _export_onnx(
        create_model("cnn_small_mnist").eval(),
        tmp_path,
        Step("evaluate", "dense"),
        {"arch": "cnn_small_mnist"},
        torch.rand(2, 1, 28, 28),
        artifacts,
        lambda *a: seen.append(a),
    )
    assert check["ok"] is False and "onnx_mismatch" in check["error"]
    assert artifacts == {} and seen == [] and not (tmp_path / "dense.onnx").exists()
