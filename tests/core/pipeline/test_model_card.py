"""The model card beside every network: Hugging Face conventions, the measured numbers with their exact
procedure, sparsity per layer, training spec, parent network, sizes, sha256, how to load it."""

import hashlib

import pytest
import yaml

from core.callbacks import RunCallbacks
from core.pipeline.model_card import render_model_card
from core.pipeline.report_build import build_variant, comparison_rows
from core.pipeline.runner import run_job
from core.spec import load_spec

TINY = {
    "seed": 1,
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 128, "max_test_samples": 60, "batch_size": 64},
    "objective": {"type": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
    "pruning": {"methods": ["hydra"], "k": [0.1]},
    "stages": {"pretrain": {"epochs": 1, "lr": 0.05}, "prune": {"epochs": 1, "lr": 0.1}, "finetune": None},
    "evaluation": {
        "pgd_steps": 2,
        "val_pgd_steps": 1,
        "val_max_samples": 20,
        "autoattack": False,
        "pgd_smooth_relu": False,
        "measure_latency": False,
    },
    "export": {"formats": ["compressed", "dense"]},  # no ONNX export (seconds per network) in these tests
}
INFO = {"name": "mnist5k", "num_classes": 10, "input_shape": [1, 28, 28], "n_train": 128, "n_test": 60}
PGD_PROC = "PGD-2 (ours; linf eps=0.1, step=0.05, 1 random start(s), cross-entropy) on the 'final' sample"
RESULT_JSON = {
    "method": "hydra",
    "n_test": 60,
    "k": 0.1,
    "seed": 1,
    "evaluated": "the exported network, reloaded from hydra_k0.1.compressed.safetensors",
    "metrics": {"benign_acc": 0.8125, "pgd_acc": 0.4375, "verified_acc_ibp": 0.25},
    "procedures": {
        "benign_acc": "top-1 accuracy on the 'final' sample (60 test samples)",
        "pgd_acc": PGD_PROC,
        "verified_acc_ibp": "verified robust accuracy: every margin lower-bounded above 0 by IBP",
    },
    "intervals": {"benign_acc": [0.7, 0.9], "pgd_acc": [0.31, 0.56], "verified_acc_ibp": [0.15, 0.37]},
    "counts": {"benign_acc": [49, 60], "pgd_acc": [26, 60], "verified_acc_ibp": [15, 60]},
    "samples": {"final": {"n": 60, "of": 60, "per_class": {"0": 6}, "how": "the whole test split"}},
    "checks": {"gradient_masking": {"possible_gradient_masking": False}},
    "interval_method": "two-sided 95% Clopper-Pearson interval from the sample count",
    "sparsity": {
        "total": 0.9,
        "prunable_params": 1000,
        "kept_params": 100,
        "layers": {
            "net.0": {"n": 256, "nnz": 26, "sparsity": 1 - 26 / 256},
            "net.6": {"n": 744, "nnz": 74, "sparsity": 1 - 74 / 744},
        },
    },
    "artifacts": {
        "compressed": {"name": "hydra_k0.1.compressed.safetensors", "size": 4321, "sha256": "a" * 64},
        "dense": {"name": "hydra_k0.1.dense.safetensors", "size": 98765, "sha256": "b" * 64},
    },
}
PARENT_JSON = {
    "method": "dense",
    "k": 1.0,
    "n_test": 60,
    "metrics": {"benign_acc": 0.9},
    "artifacts": {"compressed": {"name": "dense.compressed.safetensors", "size": 11, "sha256": "c" * 64}},
}
RESULT, PARENT = build_variant(RESULT_JSON, 10), build_variant(PARENT_JSON, 10)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_from_a_result_names_every_number_with_its_procedure():
    spec = load_spec(TINY)
    card = render_model_card("hydra_k0.1", RESULT, spec, INFO, PARENT)
    meta = _front_matter(card)
    assert meta["library_name"] == "pytorch" and "accuracy" in meta["metrics"]
    assert meta["datasets"] == ["ylecun/mnist"]  # a resolvable Hub id (mnist5k is a sample of MNIST)
    assert meta["license"] == "other"  # the default: not stated by the submitter, and the card says so
    assert {"pruning", "hydra", "adversarial-robustness"} <= set(meta["tags"])
    # the parent by what resolves it: its file and sha256, not the bare word "dense"
    assert meta["parent_network"] == {"file": "dense.compressed.safetensors", "sha256": "c" * 64}
    assert "base_model" not in meta
    threat = meta["threat_model"]
    assert threat["norm"] == "linf" and threat["eps"] == 0.1
    assert threat["attacks"] == {"pgd_acc": PGD_PROC}
    assert set(threat["certificates"]) == {"verified_acc_ibp"}
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"benign_acc": 0.8125, "pgd_acc": 0.4375, "verified_acc_ibp": 0.25}
    for section in (
        "# hydra_k0.1",
        "## Architecture",
        "## Sparsity",
        "## Evaluation",
        "### Benign",
        "### Robust",
        "### Certified",
        "## Training",
        "## Parent network",
        "## Files",
        "## How to load it",
        "## Intended use and limitations",
        "## Licence",
        "## Citation",
    ):
        assert section in card, section
    assert "`cnn_small_mnist`" in card and '"num_classes": 10' in card
    assert "90.00%" in card and "| `net.0` | 256 | 26 | 89.84% |" in card  # total and per-layer sparsity
    assert "| `pgd_acc` | 43.75% | [31.00%, 56.00%] | 26 / 60 | " + PGD_PROC + " |" in card
    assert "81.25%" in card and "verified robust accuracy" in card and "25.00%" in card
    assert "Clopper-Pearson" in card and "gradient_masking" in card
    assert "| prune | 1 | 0.1 |" in card and '"type": "pgd"' in card  # the stage and its objective
    assert "pretrain (the parent)" in card
    assert "dense.compressed.safetensors" in card and "c" * 64 in card  # the parent's file
    assert "| `hydra_k0.1.compressed.safetensors` | 4,321 | `" + "a" * 64 + "` |" in card
    assert "b" * 64 in card
    assert 'load_compressed_model("hydra_k0.1.compressed.safetensors")' in card
    assert 'create_model("cnn_small_mnist", **{"num_classes": 10})' in card
    assert 'model.net.load_state_dict(load_file("hydra_k0.1.dense.safetensors"))' in card
    assert "@inproceedings{sehwag2020hydra" in card and "not stated by the submitter" in card
    assert "l_inf perturbations of at most eps = 0.1" in card and "upper bound" in card


def test_dense_card_has_no_parent_but_the_start_point():
    spec = load_spec({**TINY, "model": {"arch": "cnn_small_mnist"}})
    dense = RESULT.model_copy(update={"method": "dense", "k": 1.0})
    card = render_model_card("dense", dense, spec, INFO)
    assert "parent_network" not in _front_matter(card)
    assert "None: this is the dense network" in card and "random initialisation" in card
    assert "| pretrain | 1 | 0.05 |" in card
    # an uploaded starting network: named as the user wrote it (spec.json), not by a worker's local copy
    spec = load_spec({**TINY, "model": {"arch": "cnn_small_mnist", "checkpoint": "/tmp/worker-7/model.safetensors"}})
    record = {**spec.model_dump(mode="json"), "model": {"arch": "cnn_small_mnist", "checkpoint": "upload:m-123"}}
    card = render_model_card("dense", dense, spec, INFO, record=record)
    assert _front_matter(card)["parent_network"] == {"checkpoint": "upload:m-123"}
    assert "checkpoint `upload:m-123`" in card and "worker-7" not in card


def test_a_run_writes_a_card_beside_every_network_and_reports_it(tmp_path):
    seen = []

    class Record(RunCallbacks):
        def on_artifact(self, name, path, size, sha256):
            seen.append((name, size, sha256))

    report = run_job(load_spec(TINY), tmp_path, Record())
    assert set(report["variants"]) == {"dense", "hydra_k0.1"}
    for variant, result in report["variants"].items():
        card_art = result["artifacts"]["model_card"]
        path = tmp_path / f"{variant}.model_card.md"
        assert card_art["name"] == path.name and path.exists()
        data = path.read_bytes()
        assert card_art == {"name": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert (path.name, len(data), card_art["sha256"]) in seen  # uploaded like the networks
        card = data.decode()
        for fmt in ("compressed", "dense"):  # names each network file's sha256
            art = result["artifacts"][fmt]
            assert art["name"] in card and art["sha256"] in card
            assert hashlib.sha256((tmp_path / art["name"]).read_bytes()).hexdigest() == art["sha256"]
        for metric in result["metrics"]:
            assert f"`{metric}`" in card and result["procedures"][metric].split()[0] in card
        assert f"{100 * result['sparsity']['total']:.2f}%" in card
    hydra_card = (tmp_path / "hydra_k0.1.model_card.md").read_text()
    assert report["variants"]["dense"]["artifacts"]["compressed"]["sha256"] in hydra_card  # its parent
    rows = comparison_rows({name: build_variant(r, 10) for name, r in report["variants"].items()})
    assert all("model_card" not in r.bytes and r.bytes["compressed"] for r in rows)


def test_a_stated_licence_is_in_the_metadata_and_the_text():
    spec = load_spec({**TINY, "export": {**TINY["export"], "license": "cc-by-4.0"}})
    card = render_model_card("hydra_k0.1", RESULT, spec, INFO, PARENT)
    assert _front_matter(card)["license"] == "cc-by-4.0" and "`cc-by-4.0`, as the submitter stated" in card


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_the_card_loads_the_network_without_this_project(tmp_path, granularity):
    """The card's plain torch.nn block, run in a fresh namespace with only torch and safetensors, loads
    the downloaded file (dense, or the smaller channel one) and gives the project loader's logits."""
    import os
    import re

    import torch

    from core.io.export import load_compressed_model
    from core.io.export_channel import load_channel_pruned

    spec = {**TINY, "pruning": {"methods": ["hydra"], "k": [0.5], "granularity": granularity}}
    report = run_job(load_spec(spec), tmp_path)
    card = (tmp_path / "hydra_k0.5.model_card.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    plain = next(b for b in blocks if "class Normalize" in b)
    assert "from core" not in plain and "import core" not in plain
    assert "stride=(2, 2), padding=(1, 1)" in plain  # no guessing of strides and paddings
    x = torch.rand(4, 1, 28, 28)
    namespace = {"x": x}
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        exec(compile(plain, "card", "exec"), namespace)
    finally:
        os.chdir(cwd)
    arts = report["variants"]["hydra_k0.5"]["artifacts"]
    ours = (
        load_channel_pruned(tmp_path / arts["channel"]["name"])
        if granularity == "channel"
        else load_compressed_model(tmp_path / arts["compressed"]["name"]).eval()
    )
    assert torch.allclose(namespace["logits"], ours(x), atol=1e-5)
