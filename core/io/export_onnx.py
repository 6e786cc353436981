"""ONNX artifacts that run with no project code, checked against PyTorch with onnxruntime.

Every variant exports its *plain* network (masked layers become ordinary convolutions/GEMMs holding
``W ⊙ M``; a rebuilt channel variant is already plain) with the input normalisation inside, so the
graph takes pixels in [0, 1]: input ``"input"`` of shape ``(batch, C, H, W)`` (batch dynamic), output
``"logits"``. The file is self-contained (weights inside, no external data). We use PyTorch's
maintained exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``) and the
legacy TorchScript one only when asked (``exporter="torchscript"``).

Running it anywhere::

    import onnxruntime as ort, numpy as np
    sess = ort.InferenceSession("hydra_k0.25.onnx", providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": images.astype(np.float32)})[0]   # images in [0, 1]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.pruning.structured import to_plain

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18
PARITY_ATOL = 1e-4


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: Tensor,
    *,
    metadata: dict[str, Any] | None = None,
    exporter: str = "dynamo",
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Write ``model`` (plain or masked; evaluated in eval mode) as one ONNX file with a dynamic batch
    dimension; ``metadata`` goes into the model's ``metadata_props`` (JSON values). Atomic. Returns
    ``{"size", "sha256"}``. A network imported from ONNX passes the user's input/output names and
    opset (below 18 the dynamo exporter's graph is down-converted by ``onnx.version_converter``)."""
    from core.io.export import file_digest

    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    plain = to_plain(model).cpu().eval()
    x = example_input.detach().cpu()[:1].expand(2, *example_input.shape[1:]).contiguous()  # batch 2: stays symbolic
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                torch.onnx.export(
                    plain,
                    (x,),
                    tmp,
                    dynamo=True,
                    external_data=False,
                    opset_version=opset,
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_shapes=({0: batch},),
                    verbose=False,
                )
            else:
                torch.onnx.export(
                    plain,
                    (x,),
                    tmp,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                )
        if metadata:
            _set_metadata(tmp, metadata)
        os.replace(tmp, path)
    except Exception as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, CoreError):
            raise
        raise CoreError(
            "onnx_export_failed",
            "export.formats",
            f"the network could not be exported to ONNX ({type(err).__name__}: {err})",
        ) from err
    size, digest = file_digest(path)
    return {"size": size, "sha256": digest}


def _set_metadata(path: str, metadata: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    onnx.save(proto, path)


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (values as stored: strings, JSON for non-strings)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


@torch.no_grad()
def check_onnx_parity(
    path: str | os.PathLike[str],
    model: nn.Module,
    inputs: Tensor,
    *,
    atol: float = PARITY_ATOL,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> float:
    """Run the ONNX file with onnxruntime (CPU) and ``model`` (eval) on ``inputs``; return the largest
    absolute logit difference, raising ``CoreError`` when it exceeds ``atol``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([output_name], {input_name: inputs.detach().cpu().numpy().astype(np.float32)})[0]
    was_training = model.training
    model.eval()
    try:
        want = model(inputs.to(next(model.parameters()).device)).detach().cpu().numpy()
    finally:
        model.train(was_training)
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= atol:
        raise CoreError(
            "onnx_mismatch",
            "export.formats",
            f"the ONNX export differs from PyTorch by {diff:.3g} (> {atol}) on the check inputs",
        )
    return diff
