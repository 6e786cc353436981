"""Artifacts: exact sparse round trips near the information bound; dense files that need no project code."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from core.errors import CoreError
from core.io.export import (
    best_rice_parameter,
    export_compressed,
    export_dense,
    file_digest,
    information_bound_bytes,
    load_compressed,
    load_compressed_model,
    rice_decode,
    rice_encode,
)
from core.models.zoo import create_model
from core.pruning.masked import convert_to_masked, init_scores, masked_layers, set_keep_fraction

ARCH = "cnn_small_mnist"
META = {"arch": ARCH, "kwargs": {"num_classes": 10}, "variant": "hydra-k0.1"}


# ---------------------------------------------------------------------------- the codec
def test_rice_code_known_answer():
    # gaps 0,1,2,3 with k=1: quotients 0,0,1,1 -> unary "1 1 01 01"; remainders 0,1,0,1.
    unary, rem = rice_encode(np.array([0, 1, 2, 3]), 1)
    assert unary.tolist() == [0b11010100] and rem.tolist() == [0b01010000]
    assert rice_decode(unary, rem, 4, 1).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("k", [0, 1, 3, 7, 13])
def test_rice_round_trip(k):
    gaps = np.random.default_rng(k).geometric(0.02, size=1001) - 1
    gaps[:3] = [0, 5000, 0]
    assert np.array_equal(rice_decode(*rice_encode(gaps, k), gaps.size, k), gaps)
    assert rice_decode(*rice_encode(np.zeros(0, np.int64), k), 0, k).size == 0


def test_best_rice_parameter_matches_the_geometric_optimum():
    # For gaps ~ Geometric(p) the optimal Rice parameter is about log2(ln 2 / p): k = 6 at p = 0.01.
    gaps = np.random.default_rng(0).geometric(0.01, size=100_000) - 1
    assert best_rice_parameter(gaps) == 6


def test_information_bound_known_answer():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.normalize = nn.Module()
            self.normalize.register_buffer("mean", torch.zeros(3))
            self.normalize.register_buffer("std", torch.ones(3))
            self.net = convert_to_masked(nn.Sequential(nn.Linear(4, 5)))

    model = Wrapped()
    set_keep_fraction(model, 0.25)  # 5 of 20 weights kept
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    # 5 values + 20·H(1/4) bits of positions + 5 bias floats + 6 normalisation floats
    assert information_bound_bytes(model) == math.ceil(5 * 4 + 20 * h / 8 + 5 * 4 + 6 * 4) == 67


# ---------------------------------------------------------------------------- compressed
def _masked_model(k, seed=0):
    torch.manual_seed(seed)
    model = convert_to_masked(create_model(ARCH))
    init_scores(model, "scaled")
    set_keep_fraction(model, k)
    model.eval()
    return model


def _effective_net_state(model):
    out = {}
    layers = {name: layer for name, layer in masked_layers(model.net)}
    for key, value in model.net.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        if layer in layers and leaf in ("scores", "mask", "keep"):
            continue
        out[key] = layers[layer].effective_weight().detach() if layer in layers and leaf == "weight" else value
    return out


def _bits(t):
    return (t + 0.0).view(torch.int32) if t.dtype == torch.float32 else t  # +0.0 folds -0.0 into 0.0


def _check_round_trip(model, path):
    info = export_compressed(model, path, META)
    assert (info["size"], info["sha256"]) == file_digest(path)
    state, meta = load_compressed(path)
    want = _effective_net_state(model)
    assert state.keys() == want.keys()
    for key in want:
        assert state[key].dtype == want[key].dtype and torch.equal(_bits(state[key]), _bits(want[key])), key
    assert meta["arch"] == ARCH and meta["variant"] == "hydra-k0.1"
    assert meta["normalize"]["mean"] == model.normalize.mean.reshape(-1).tolist()
    rebuilt = load_compressed_model(path).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    return info["size"], information_bound_bytes(model)


@pytest.mark.parametrize("k", [1.0, 0.5, 0.1, 0.05, 0.01])
def test_compressed_round_trip_is_exact_and_near_the_bound(tmp_path, k):
    model = _masked_model(k)
    size, bound = _check_round_trip(model, tmp_path / "m.safetensors")
    assert size <= 1.20 * bound, (size, bound, size / bound)
    if k < 1.0:  # genuinely smaller than the dense weights
        dense_bytes = sum(t.numel() * t.element_size() for t in _effective_net_state(model).values())
        assert size < dense_bytes * (k + 0.05)


def test_layers_fully_pruned_or_with_a_single_survivor(tmp_path):
    model = _masked_model(0.1)
    layers = masked_layers(model)
    with torch.no_grad():
        layers[0][1].mask.zero_()  # everything pruned
        layers[-1][1].mask.zero_()
        layers[-1][1].mask.view(-1)[7] = 1.0  # all but one pruned
    _check_round_trip(model, tmp_path / "m.safetensors")
    state, _ = load_compressed(tmp_path / "m.safetensors")
    assert int(torch.count_nonzero(state[f"{layers[0][0].removeprefix('net.')}.weight"])) == 0
    last = state[f"{layers[-1][0].removeprefix('net.')}.weight"].reshape(-1)
    assert torch.count_nonzero(last) == 1 and last[7] == layers[-1][1].weight.reshape(-1)[7]


def test_compressed_file_is_validated_on_load(tmp_path):
    path = tmp_path / "m.safetensors"
    export_compressed(_masked_model(0.1), path, META)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    codec = json.loads(header["codec"])
    key = next(iter(codec))
    tampered = {**codec, key: {**codec[key], "nnz": codec[key]["nnz"] + 1}}
    save_file(tensors, str(path), metadata={**header, "codec": json.dumps(tampered)})
    with pytest.raises(CoreError) as err:
        load_compressed(path)
    assert err.value.code == "invalid_checkpoint" and key in err.value.message
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(CoreError, match="not a compressed"):
        load_compressed(plain)


# ---------------------------------------------------------------------------- dense
def test_dense_export_has_effective_weights_and_no_pruning_state(tmp_path):
    model = _masked_model(0.05)
    path = tmp_path / "d.safetensors"
    info = export_dense(model, path, META)
    assert (info["size"], info["sha256"]) == file_digest(path)
    tensors = load_file(str(path))
    want = _effective_net_state(model)
    assert tensors.keys() == want.keys()
    assert all(torch.equal(tensors[k], want[k]) for k in want)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["arch"] == ARCH
    assert json.loads(header["normalize_mean"]) == model.normalize.mean.reshape(-1).tolist()
    assert json.loads(header["normalize_std"]) == model.normalize.std.reshape(-1).tolist()


def _plain_cnn_small_mnist():
    """The architecture written out with nothing but torch.nn, as a user without our code would."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def _user_side_forward(plain, path, x):
    """Load a dense artifact with safetensors + torch.nn only and run it on [0, 1] pixels."""
    plain.load_state_dict(load_file(str(path)), strict=True)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    mean = torch.tensor(json.loads(header["normalize_mean"])).view(1, -1, 1, 1)
    std = torch.tensor(json.loads(header["normalize_std"])).view(1, -1, 1, 1)
    with torch.no_grad():
        return plain.eval()((x - mean) / std)


def test_dense_export_loads_into_the_plain_architecture(tmp_path):
    model = _masked_model(0.1)
    path = tmp_path / "d.safetensors"
    export_dense(model, path, META)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(_user_side_forward(_plain_cnn_small_mnist(), path, x), model(x), atol=1e-6)


def test_dense_resnet50_loads_into_torchvision(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = convert_to_masked(create_model("resnet50", num_classes=10)).eval()
    init_scores(model, "scaled")
    set_keep_fraction(model, 0.05)
    path = tmp_path / "r50.safetensors"
    export_dense(model, path, {"arch": "resnet50", "kwargs": {"num_classes": 10}})
    x = torch.rand(1, 3, 64, 64)
    got = _user_side_forward(torchvision.models.resnet50(num_classes=10), path, x)
    with torch.no_grad():
        assert torch.allclose(got, model(x), atol=1e-5, rtol=1e-4)


def test_artifacts_are_byte_reproducible(tmp_path):
    # the safetensors library orders header metadata at random; the sha256 of an artifact must not move
    model = _masked_model(0.05)
    for writer in (export_compressed, export_dense):
        digests = {writer(model, tmp_path / f"{writer.__name__}{i}.safetensors", META)["sha256"] for i in range(6)}
        assert len(digests) == 1, writer.__name__


def test_nan_in_a_compressed_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    export_compressed(_masked_model(0.1), path, META)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    tensors["::values:float32"][3] = float("nan")
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(CoreError, match="NaN or Inf"):
        load_compressed(path)
