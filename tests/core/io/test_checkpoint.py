"""Checkpoints: atomic, weights-only round trips; strict import of starting networks."""

import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from core.errors import CoreError
from core.io import checkpoint as ckpt
from core.io.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from core.io.weights import load_weights
from core.models.zoo import create_model
from core.pruning.masked import convert_to_masked, init_scores, masked_layers, set_keep_fraction

ARCH = "cnn_small_mnist"


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _trained_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=10)
    for opt in (sgd, adam):
        loss = model(torch.randn(16, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sched.step()
    return model, sgd, adam, sched


def test_round_trip_of_a_training_checkpoint(tmp_path):
    model, sgd, adam, sched = _trained_state()
    random.seed(5)
    np.random.seed(5)
    rng = capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())  # what follows the captured state
    state = {
        "model": model.state_dict(),
        "optimizer": sgd.state_dict(),
        "adam": adam.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng,
        "stage": "prune",
        "variant": "hydra-k0.05",
        "epoch": np.int64(3),  # numpy scalars are converted, not refused
        "spec": {"seed": 3, "pruning": {"k": [0.1, 0.05]}, "name": None},
    }
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state)
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    back = load_checkpoint(path)
    assert back["stage"] == "prune" and back["variant"] == "hydra-k0.05" and back["epoch"] == 3
    assert back["spec"] == state["spec"]
    assert _same(back["model"], model.state_dict())
    assert back["scheduler"] == sched.state_dict()
    # Optimizer states load back into fresh optimizers and continue identically.
    fresh = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    fresh.load_state_dict(back["model"])
    sgd2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sgd2.load_state_dict(back["optimizer"])
    adam2 = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    adam2.load_state_dict(back["adam"])
    for p, q in zip(sgd.state_dict()["state"].values(), sgd2.state_dict()["state"].values()):
        assert torch.equal(p["momentum_buffer"], q["momentum_buffer"])
    assert int(adam2.state_dict()["state"][0]["step"]) == 1
    # RNG streams continue where they were captured.
    restore_rng_state(back["rng"])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1})
    original = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert path.read_bytes() == original


def test_unloadable_objects_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"state\['spec'\]"):
        save_checkpoint(tmp_path / "c.pt", {"spec": object()})
    assert os.listdir(tmp_path) == []


def _leave_marker(path):  # what a malicious payload would run on load
    open(path, "w").close()
    return {}


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload(str(marker))}, path)
    with pytest.raises(CoreError) as err:
        load_checkpoint(path)
    assert err.value.code == "invalid_checkpoint"
    model = convert_to_masked(create_model(ARCH))
    before = _snapshot(model)
    with pytest.raises(CoreError) as err:
        load_weights(path, model)
    assert err.value.field == "model.checkpoint"
    assert not marker.exists()
    assert _same(before, _snapshot(model))


# ---------------------------------------------------------------------------- load_weights
def _source_model(seed=1):
    torch.manual_seed(seed)
    return create_model(ARCH)


def test_plain_state_dict_of_the_net_with_ddp_prefix(tmp_path):
    src = _source_model()
    path = tmp_path / "w.pt"
    torch.save({"epoch": 9, "state_dict": {f"module.{k}": v for k, v in src.net.state_dict().items()}}, path)
    model = convert_to_masked(create_model(ARCH))
    report = load_weights(path, model)
    assert report["format"] == "state_dict"
    for key, value in src.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    assert all(k.endswith(("scores", "mask", "keep")) for k in report["derived"] if k.startswith("net."))


def test_full_model_state_dict_under_model_key(tmp_path):
    src = _source_model()
    path = tmp_path / "w.pth"
    torch.save({"model": src.state_dict()}, path)
    model = create_model(ARCH)  # a plain (unmasked) target works too
    load_weights(path, model, "state_dict")
    assert _same(model.state_dict(), src.state_dict())


def test_safetensors_import(tmp_path):
    src = _source_model()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.net.state_dict().items()}, str(path))
    model = convert_to_masked(create_model(ARCH))
    assert load_weights(path, model)["format"] == "safetensors"
    for key, value in src.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


def test_hydra_reference_checkpoint_with_popup_scores(tmp_path):
    ref = convert_to_masked(_source_model())
    init_scores(ref, "scaled")
    with torch.no_grad():  # scores trained away from the magnitude order
        for _, layer in masked_layers(ref):
            layer.scores.add_(torch.randn_like(layer.scores) * layer.scores.std())
    sd = {}
    for key, value in ref.net.state_dict().items():  # the reference's names: popup_scores, no mask buffers
        if key.endswith((".mask", ".keep")):
            continue
        sd[key.replace(".scores", ".popup_scores")] = value
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 20, "arch": "vgg16_bn", "state_dict": sd, "best_prec1": 41.7}, path)

    model = convert_to_masked(create_model(ARCH))
    report = load_weights(path, model, keep=0.05)
    assert report["format"] == "hydra"
    set_keep_fraction(ref, 0.05)
    for (name, got), (_, want) in zip(masked_layers(model), masked_layers(ref)):
        assert torch.equal(got.weight, want.weight) and torch.equal(got.scores, want.scores), name
        assert torch.equal(got.mask, want.mask), name  # masks recomputed from the imported scores
        assert float(got.keep) == pytest.approx(0.05)
        assert int(got.mask.sum()) == want.weight.numel() - int((1 - 0.05) * want.weight.numel() + 1e-6)


def _bad_files(tmp_path):
    src = _source_model().net.state_dict()
    first_w = next(k for k in src if k.endswith("weight"))
    nan = dict(src)
    nan[first_w] = src[first_w].clone()
    nan[first_w].view(-1)[0] = float("nan")
    inf = dict(src)
    inf[first_w] = src[first_w].clone()
    inf[first_w].view(-1)[-1] = float("inf")
    shape = dict(src)
    shape[first_w] = torch.zeros(2, 3)
    extra = {**src, "head.weight": torch.zeros(3)}
    missing = {k: v for k, v in src.items() if k != first_w}
    return first_w, {"nan": nan, "inf": inf, "shape": shape, "extra": extra, "missing": missing}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("shape", "shape (2, 3) in the checkpoint"),
        ("extra", "unexpected keys: head.weight"),
        ("missing", "missing keys"),
    ],
)
def test_bad_checkpoints_are_refused_and_leave_the_model_untouched(tmp_path, case, expected):
    first_w, files = _bad_files(tmp_path)
    path = tmp_path / f"{case}.safetensors"
    save_file({k: v.contiguous() for k, v in files[case].items()}, str(path))
    model = convert_to_masked(create_model(ARCH))
    before = _snapshot(model)
    with pytest.raises(CoreError) as err:
        load_weights(path, model)
    assert (err.value.code, err.value.field) == ("invalid_checkpoint", "model.checkpoint")
    assert expected in err.value.message
    if case in ("shape", "missing", "nan"):
        assert first_w in err.value.message  # the tensor is named
    if case == "shape":
        want = tuple(dict(model.net.named_parameters())[first_w].shape)
        assert str(want) in err.value.message  # and both shapes
    assert _same(before, _snapshot(model))


def test_wrong_architecture_names_every_mismatch(tmp_path):
    src = create_model(ARCH, num_classes=7)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    model = convert_to_masked(create_model(ARCH))
    before = _snapshot(model)
    with pytest.raises(CoreError) as err:
        load_weights(path, model)
    assert "in the checkpoint" in err.value.message and "7" in err.value.message
    assert _same(before, _snapshot(model))


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    model = create_model(ARCH)
    with pytest.raises(CoreError) as err:
        load_weights(junk, model)
    assert err.value.field == "model.checkpoint"
    with pytest.raises(CoreError) as err:
        load_weights(tmp_path / "absent.pt", model)
    assert err.value.code == "checkpoint_not_found"
