"""The service's weights check (core.io.weights_check) says what ``check_weights`` says, reading less.

Every file goes through both ``check_weights`` (which reads every tensor) and ``check_weights_file``
(header shapes and chunked values; chunks of 1 kB here, so NaN at the end of a tensor is found
across chunk boundaries): same format and keys, or the same refusal. A torch zip with deflated
members (a compression bomb in the making) is refused by the latter before anything is read; a
safetensors file of a 15 M-parameter network is checked in a child process whose peak RSS is measured.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from core.errors import CoreError
from core.io.export import export_compressed
from core.io.weights import check_weights
from core.io.weights_check import check_weights_file, tensor_chunks
from core.models.zoo import create_model
from core.pruning.masked import convert_to_masked, init_scores, set_keep_fraction

ARCH = "cnn_small_mnist"
MB = 1024 * 1024


def _state(masked: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = create_model(ARCH)
    if masked:
        model = convert_to_masked(model)
        init_scores(model, "scaled")
        set_keep_fraction(model, 0.5)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _first_weight(state: dict[str, torch.Tensor]) -> str:
    return next(k for k in state if k.endswith("weight"))


def _edit(fn: Callable[[dict[str, torch.Tensor], str], None], masked: bool = False) -> dict[str, torch.Tensor]:
    state = _state(masked)
    fn(state, _first_weight(state))
    return state


def _mask_key(state: dict[str, torch.Tensor]) -> str:
    return next(k for k in state if k.endswith(".mask"))


STATES: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    "good": _state,
    "nan-first": lambda: _edit(lambda s, k: s[k].view(-1).__setitem__(0, float("nan"))),
    "inf-last": lambda: _edit(lambda s, k: s[k].view(-1).__setitem__(-1, float("inf"))),
    "fp16": lambda: _edit(lambda s, k: s.__setitem__(k, s[k].half())),
    "wrong-shape": lambda: _edit(lambda s, k: s.__setitem__(k, torch.zeros(2, 3))),
    "extra-key": lambda: _edit(lambda s, k: s.__setitem__("head.weight", torch.zeros(3))),
    "missing-key": lambda: _edit(lambda s, k: s.pop(k)),
    "int-where-float": lambda: _edit(lambda s, k: s.__setitem__(k, s[k].to(torch.int32))),
    "masked-good": lambda: _state(masked=True),
    "mask-not-binary": lambda: _edit(lambda s, k: s[_mask_key(s)].view(-1).__setitem__(-1, 0.5), masked=True),
    "keep-above-one": lambda: _edit(lambda s, k: s[k.replace("weight", "keep")].fill_(2.0), masked=True),
    "popup-scores": lambda: {k.replace(".scores", ".popup_scores"): v for k, v in _state(masked=True).items()},
}


def _write(state: dict[str, torch.Tensor], container: str, path: Path) -> None:
    if container == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=container == "zip")


def _outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        result = fn()
    except CoreError as err:
        return ("refused", err.code, err.field, err.message)
    info = result[1] if isinstance(result, tuple) else result
    return ("accepted", info["format"], tuple(info["loaded"]), tuple(info["derived"]))


@pytest.mark.parametrize("container", ["safetensors", "zip", "legacy"])
@pytest.mark.parametrize("case", sorted(STATES))
def test_streamed_weights_check_agrees_with_check_weights(case: str, container: str, tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    _write(STATES[case](), container, path)
    masked = case.startswith(("masked", "mask-", "keep-", "popup"))
    with torch.device("meta"):
        model = convert_to_masked(create_model(ARCH)) if masked else create_model(ARCH)
    whole = _outcome(lambda: check_weights(path, model))
    streamed = _outcome(lambda: check_weights_file(path, model, chunk_bytes=1024))
    assert streamed == whole
    assert (whole[0] == "accepted") == (case in ("good", "masked-good", "popup-scores")), whole


def test_a_compressed_artifact_and_declared_formats(tmp_path: Path) -> None:
    torch.manual_seed(0)
    masked = convert_to_masked(create_model(ARCH))
    init_scores(masked, "scaled")
    set_keep_fraction(masked, 0.1)
    path = tmp_path / "c.safetensors"
    export_compressed(masked.eval(), path, {"arch": ARCH, "kwargs": {}})
    with torch.device("meta"):
        model = create_model(ARCH)
    assert check_weights_file(path, model)["format"] == "compressed"
    assert _outcome(lambda: check_weights_file(path, model)) == _outcome(lambda: check_weights(path, model))
    for fmt in ("state_dict", "hydra"):  # a safetensors file declared as a torch checkpoint
        streamed = _outcome(partial(check_weights_file, path, model, fmt))
        assert streamed == _outcome(partial(check_weights, path, model, fmt))
        assert streamed[0] == "refused" and "declared a torch" in streamed[3]


def test_a_torch_zip_with_deflated_members_is_refused_before_reading(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({**_state(), "junk": torch.zeros(MB // 2)}, buffer)  # 2 MB of zeros
    source = zipfile.ZipFile(buffer)
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
    assert path.stat().st_size < MB
    with torch.device("meta"):
        model = create_model(ARCH)
    with pytest.raises(CoreError, match="compressed member") as err:
        check_weights_file(path, model)
    assert "refused before reading" in err.value.message and err.value.field == "model.checkpoint"


def test_tensor_chunks_are_views_covering_every_value() -> None:
    t = torch.arange(2 * 3 * 50, dtype=torch.float32).reshape(2, 3, 50)
    for limit in (1, 7, 50, 149, 150, 10_000):
        pieces = list(tensor_chunks(t, limit))
        assert all(p.numel() <= max(limit, 50) for p in pieces)  # a row of 50 is the smallest view here
        assert torch.equal(torch.cat([p.reshape(-1) for p in pieces]), t.reshape(-1))
        assert all(p.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for p in pieces)


_CHILD = """
import json, sys, torch
from core.io.weights_check import check_weights_file
from core.models.zoo import create_model

def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

with torch.device("meta"):
    model = create_model(sys.argv[2])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = kb("VmRSS:")
info = check_weights_file(sys.argv[1], model)
print(json.dumps({"growth_kb": kb("VmHWM:") - base, "format": info["format"]}))
"""


def test_a_large_safetensors_file_is_checked_in_a_few_megabytes(tmp_path: Path) -> None:
    """vgg16_bn, 15.3 M parameters, 58 MiB of safetensors: ``check_weights`` holds all of it."""
    if not Path("/proc/self/clear_refs").exists():  # pragma: no cover - not Linux
        pytest.skip("needs /proc/self/clear_refs to reset the peak RSS")
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in create_model("vgg16_bn").state_dict().items()}
    path = tmp_path / "vgg.safetensors"
    save_file({k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}, str(path))
    assert path.stat().st_size > 55 * MB
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), "vgg16_bn"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["format"] == "safetensors"
    assert result["growth_kb"] < 24 * 1024, result
