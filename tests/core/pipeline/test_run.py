"""The pipeline end to end on real MNIST digits (mnist5k), tiny: stages, variants, resume, reports."""

import json

import pytest
import torch
from safetensors.torch import load_file

from core.callbacks import RunCallbacks
from core.errors import RunCanceled
from core.io.export import load_compressed, load_compressed_model
from core.pipeline import plan as plan_mod
from core.pipeline import runner as run_mod
from core.pipeline import training as objectives_mod
from core.pipeline.plan import plan_steps
from core.pipeline.runner import run_job
from core.spec import load_spec

TINY = {
    "seed": 3,
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 192, "max_test_samples": 64, "batch_size": 64},
    "objective": {"type": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
    "pruning": {"methods": ["hydra", "lwm"], "k": [0.05]},
    "stages": {
        "pretrain": {"epochs": 1, "lr": 0.05},
        "prune": {"epochs": 1, "lr": 0.1},
        "finetune": {"epochs": 2, "lr": 0.01},
    },
    "evaluation": {"pgd_steps": 3, "val_pgd_steps": 2, "val_max_samples": 32, "measure_latency": False},
    "export": {"formats": ["compressed", "dense"]},  # no ONNX export (seconds per network) in these tests
}


def tiny(**patch):
    data = json.loads(json.dumps(TINY))
    for key, value in patch.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return load_spec(data)


class Recorder(RunCallbacks):
    def __init__(self, cancel_after=None):
        self.events, self.batches, self.cancel_after = [], 0, cancel_after

    def on_event(self, kind, payload):
        self.events.append((kind, payload))

    def on_progress(self, **kw):
        self.batches += 1

    def should_cancel(self):
        return self.cancel_after is not None and self.batches >= self.cancel_after


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rec = Recorder()
    report = run_job(tiny(), out, rec)
    return out, report, rec


def test_plan_follows_the_spec():
    kinds = [(s.kind, s.variant) for s in plan_steps(tiny())]
    assert kinds == [
        ("pretrain", "dense"),
        ("evaluate", "dense"),
        ("prune", "hydra_k0.05"),
        ("finetune", "hydra_k0.05"),
        ("evaluate", "hydra_k0.05"),
        ("finetune", "lwm_k0.05"),
        ("evaluate", "lwm_k0.05"),
    ]
    # robust sub-network of a non-robust network: natural pretraining, robust pruning, no finetune
    spec = tiny(
        stages={"pretrain": {"epochs": 1, "lr": 0.05, "objective": {"type": "natural"}}, "finetune": None},
        pruning={"methods": ["hydra"], "k": [0.5]},
    )
    assert [s.kind for s in plan_steps(spec)] == ["pretrain", "evaluate", "prune", "evaluate"]
    assert spec.objective_for("pretrain").type == "natural" and spec.objective_for("prune").type == "pgd"


def test_run_produces_reports_and_artifacts(finished):
    out, report, rec = finished
    assert {r["variant"] for r in report["comparison"]} == {"dense", "hydra_k0.05", "lwm_k0.05"}
    for row in report["comparison"]:
        assert 0 <= row["metrics"]["pgd_acc"] <= row["metrics"]["benign_acc"] <= 1
    assert report["format"] == "hydra-compress-report/3"
    # the training loss of every epoch, and the wall time of every stage and attack, per network
    hydra = report["variants"]["hydra_k0.05"]
    assert [len(v) for v in hydra["training_loss"].values()] == [1, 2]  # prune: 1 epoch, finetune: 2
    assert set(hydra["timings"]["stages"]) == {"prune", "finetune", "export", "evaluate"}
    assert set(report["variants"]["dense"]["timings"]["stages"]) == {"pretrain", "export", "evaluate"}
    assert set(hydra["timings"]["attacks"]) >= {"pgd"} and all(t > 0 for t in hydra["timings"]["attacks"].values())
    finished_stages = [p for k, p in rec.events if k == "stage_finished"]
    assert (
        all(p["seconds"] >= 0 for p in finished_stages) and len(finished_stages) == 3 + 4 + 3
    )  # dense, hydra (prune + finetune), lwm
    evaluated = [p for k, p in rec.events if k == "evaluation_finished"]
    assert all("pgd" in p["attack_seconds"] for p in evaluated)
    assert {"chance_accuracy", "training_diverged", "robust_above_benign"} <= set(hydra["checks"])
    for name in ("hydra_k0.05", "lwm_k0.05"):
        sp = report["variants"][name]["sparsity"]
        # the measured sparsity is that of k = 0.05 in every layer (floor((1-k) n) zeroed per layer)
        assert sp["total"] == pytest.approx(0.95, abs=0.01)
        for layer in sp["layers"].values():
            assert layer["nnz"] == layer["n"] - int((1 - 0.05) * layer["n"])
    for f in (
        "report.json",
        "report.md",
        "comparison.png",
        "spec.json",
        "hydra_k0.05.compressed.safetensors",
        "lwm_k0.05.dense.safetensors",
        "dense.dense.safetensors",
    ):
        assert (out / f).exists(), f
    assert "PGD-3" in report["procedures"]["pgd_acc"]
    epochs = [p for k, p in rec.events if k == "epoch_finished"]
    assert len(epochs) == 1 + 1 + 2 + 2  # pretrain, prune, finetune x2 variants


def test_compressed_artifact_reproduces_reported_accuracy(finished):
    out, report, _ = finished
    from core.data.datasets import build_datasets

    spec = tiny()
    _, test_ds, _ = build_datasets(spec.dataset, spec.seed)
    x = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    y = torch.as_tensor([int(test_ds[i][1]) for i in range(len(test_ds))])
    model = load_compressed_model(out / "hydra_k0.05.compressed.safetensors").eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(report["variants"]["hydra_k0.05"]["metrics"]["benign_acc"], abs=1e-6)


def test_lwm_keeps_the_largest_pretrained_magnitudes(finished):
    out, _, _ = finished
    dense = load_file(str(out / "dense.dense.safetensors"))
    lwm, _ = load_compressed(out / "lwm_k0.05.compressed.safetensors")
    for key, w in dense.items():
        if not key.endswith(".weight") or w.dim() < 2:
            continue
        kept = lwm[key] != 0
        n_keep = w.numel() - int(0.95 * w.numel())
        top = torch.zeros(w.numel(), dtype=torch.bool)
        top[w.abs().flatten().topk(n_keep).indices] = True
        assert torch.equal(kept.flatten() & ~top, torch.zeros_like(top)), key  # nothing outside the top-|W|


def test_masks_refreshed_only_in_prune(monkeypatch, tmp_path):
    calls = []
    real = run_mod.refresh_masks
    current = {"stage": None}

    class StageSpy(RunCallbacks):
        def on_event(self, kind, payload):
            if kind == "stage_started":
                current["stage"] = payload["stage"]
            elif kind in ("stage_finished", "evaluation_finished"):
                current["stage"] = None

    def spy(model):
        calls.append(current["stage"])
        return real(model)

    monkeypatch.setattr(run_mod, "refresh_masks", spy)
    monkeypatch.setattr(objectives_mod, "refresh_masks", spy)  # train_step's per-update refresh
    run_job(tiny(pruning={"methods": ["hydra"], "k": [0.05]}), tmp_path, StageSpy())
    # 192 samples / 64 per batch, one epoch of pruning: once per score update, plus the entry into
    # each variant (outside any training stage); never during pretraining or fine-tuning.
    assert calls.count("prune") == 3
    assert "finetune" not in calls and "pretrain" not in calls


def test_interrupted_run_resumes_bit_for_bit(finished, tmp_path):
    out, report, _ = finished
    # stop in the middle of the hydra finetune (batches: 3 pretrain, 3 prune, 3 + 2 finetune)
    with pytest.raises(RunCanceled):
        run_job(tiny(), tmp_path, Recorder(cancel_after=11))
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "report.json").exists()
    resumed = run_job(tiny(), tmp_path, Recorder(), resume=True)
    for variant in ("dense", "hydra_k0.05", "lwm_k0.05"):
        a = report["variants"][variant]["artifacts"]["compressed"]["sha256"]
        b = resumed["variants"][variant]["artifacts"]["compressed"]["sha256"]
        assert a == b, variant
    assert resumed["comparison"] == report["comparison"]


class CancelInEvaluation(Recorder):
    """Asks to cancel once the final evaluation of ``variant`` has started (no batch runs after it)."""

    def __init__(self, variant):
        super().__init__()
        self.variant, self.asked = variant, False

    def on_event(self, kind, payload):
        super().on_event(kind, payload)
        if kind == "stage_started" and payload == {"stage": "evaluate", "variant": self.variant, "epochs": 0}:
            self.asked = True

    def should_cancel(self):
        return self.asked


@pytest.mark.parametrize("variant", ["hydra_k0.05", "lwm_k0.05"])  # lwm's is the run's last step
def test_a_cancel_during_the_final_evaluation_stops_the_run(finished, tmp_path, variant):
    out, report, _ = finished
    rec = CancelInEvaluation(variant)
    with pytest.raises(RunCanceled, match="final evaluation, before PGD"):
        run_job(tiny(), tmp_path, rec)
    assert not (tmp_path / "report.json").exists()  # it must not end as a finished (succeeded) run
    assert ("evaluation_finished", {"variant": variant}) not in [
        (k, {"variant": p.get("variant")}) for k, p in rec.events
    ]
    resumed = run_job(tiny(), tmp_path, Recorder(), resume=True)  # the step is redone from the checkpoint
    assert resumed["comparison"] == report["comparison"]


def test_resume_refuses_a_different_spec(tmp_path):
    from core.errors import CoreError

    with pytest.raises(RunCanceled):
        run_job(tiny(), tmp_path, Recorder(cancel_after=5))  # after the pretrain epoch's checkpoint
    assert (tmp_path / "checkpoint.pt").exists()
    from core.errors import ResumeMismatch

    with pytest.raises(ResumeMismatch) as info:
        run_job(tiny(seed=4, stages={"finetune": {"epochs": 2, "lr": 0.02}}), tmp_path, Recorder(), resume=True)
    assert isinstance(info.value, CoreError) and info.value.code == "resume_mismatch"
    assert info.value.fields == ["seed", "stages.finetune.lr"]  # what differs, by the paths a user writes
    assert "seed, stages.finetune.lr" in info.value.message


def test_a_bound_objective_refuses_an_unsupported_layer_before_any_training(monkeypatch, tmp_path):
    from torch import nn

    from core.errors import CoreError
    from core.pruning.masked import convert_to_masked

    def with_batchnorm(spec, info):
        layers = [nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)]
        return convert_to_masked(nn.Sequential(*layers))

    monkeypatch.setattr(run_mod, "build_network", with_batchnorm)
    data = json.loads(json.dumps(TINY))
    data["objective"] = {"type": "crown_ibp", "eps": 0.1}
    rec = Recorder()
    with pytest.raises(CoreError) as err:
        run_job(load_spec(data), tmp_path, rec)
    assert err.value.code == "unsupported_layer" and "BatchNorm2d" in err.value.message
    assert rec.batches == 0 and not (tmp_path / "checkpoint.pt").exists()


def test_step_schedule_divides_by_10_at_75_and_by_100_at_90_percent():
    from core.pipeline.training import lr_at
    from core.spec import StageSpec

    stage = StageSpec(epochs=100, lr=0.1, schedule="step")
    lrs = {i: lr_at(stage, i, 1000) for i in (0, 499, 500, 749, 750, 899, 900, 999)}
    assert lrs == pytest.approx({0: 0.1, 499: 0.1, 500: 0.1, 749: 0.1, 750: 0.01, 899: 0.01, 900: 0.001, 999: 0.001})
    warm = StageSpec(epochs=10, lr=0.1, schedule="step", warmup_epochs=2)  # 100 iterations an epoch
    assert lr_at(warm, 99, 1000) == pytest.approx(0.05)  # warmup, then 75%/90% of the remaining 800
    assert lr_at(warm, 799, 1000) == pytest.approx(0.1) and lr_at(warm, 800, 1000) == pytest.approx(0.01)
    assert lr_at(warm, 919, 1000) == pytest.approx(0.01) and lr_at(warm, 920, 1000) == pytest.approx(0.001)


def test_resume_mismatch_lists_nested_differences():
    saved = {
        "seed": 1,
        "stages": {"prune": {"lr": 0.1, "epochs": 2}, "finetune": None},
        "pruning": {"k": [0.1]},
        "evaluation": {"a": 1},
    }
    current = {
        "seed": 1,
        "stages": {"prune": {"lr": 0.2, "epochs": 2}, "finetune": {"lr": 0.01}},
        "pruning": {"k": [0.1, 0.05]},
        "evaluation": {"a": 1, "b": 2},
    }
    assert plan_mod.differing_fields(saved, current) == [
        "evaluation.b",
        "pruning.k",
        "stages.finetune",
        "stages.prune.lr",
    ]
    assert plan_mod.differing_fields(saved, saved) == []
