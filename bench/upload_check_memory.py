"""Peak memory of checking an uploaded ``.npz``: the loader (what the API ran before) vs the streamed check.

The file is the issue's deflate bomb: uint8 zero ``images`` (N, 28, 28) declaring ``--sizes`` MiB
and int64 zero labels, deflated (256 MiB declared -> ~264 kB on disk). Each check runs in a fresh
child process that has imported everything first; its peak RSS is reset (``/proc/self/clear_refs``)
just before the check, so the growth printed is the check's own. ``loader`` is
``build_datasets({"name": "npz", ...})`` (the API's validation until issue 16), ``streamed`` is
``core.data.npz_check.check_npz`` (the API's validation now).

``--weights`` adds the model uploads, against ``vgg16_bn`` (15.3 M parameters) built on the meta
device as the API does: a 58 MiB safetensors file of it, and a torch zip of it plus a 256 MiB zero
tensor, deflated to a few hundred kB. ``whole`` is ``core.io.weights.check_weights`` (the API's
check until issue 16), ``streamed`` is ``core.io.weights_check.check_weights_file``.
``--json`` ends with one JSON line.

    python bench/upload_check_memory.py [--sizes 64 256 1024] [--weights] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024

CHILD = """
import json, sys, time
from core.data.datasets import build_datasets
from core.data.npz_check import check_npz

def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

method, path = sys.argv[1], sys.argv[2]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = kb("VmRSS:")
start = time.perf_counter()
if method == "loader":
    info = build_datasets({"name": "npz", "path": path, "num_classes": 10}, seed=0)[2]
    n = info["n_train"] + info["n_test"]
else:
    n = check_npz(path, 10)["n_samples"]
print(json.dumps({"growth_mb": (kb("VmHWM:") - base) / 1024, "seconds": time.perf_counter() - start, "n": n}))
"""


WEIGHTS_CHILD = """
import json, sys, time, torch
from core.errors import CoreError
from core.io.weights import check_weights
from core.io.weights_check import check_weights_file
from core.models.zoo import create_model

def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

method, path = sys.argv[1], sys.argv[2]
with torch.device("meta"):
    model = create_model("vgg16_bn")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = kb("VmRSS:")
start = time.perf_counter()
try:
    outcome = (check_weights(path, model)[1] if method == "whole" else check_weights_file(path, model))["format"]
except CoreError as err:
    outcome = "refused: " + err.message[:90]
print(json.dumps({"growth_mb": (kb("VmHWM:") - base) / 1024, "seconds": time.perf_counter() - start, "n": outcome}))
"""


def write_weights(folder: Path) -> dict[str, Path]:
    """vgg16_bn's zero state dict as safetensors, and as a deflated torch zip with a 256 MiB extra."""
    import io

    import torch
    from safetensors.torch import save_file

    from core.models.zoo import create_model

    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in create_model("vgg16_bn").state_dict().items()}
    state = {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}
    files = {"safetensors": folder / "vgg.safetensors", "deflated-pt": folder / "vgg-bomb.pt"}
    save_file(state, str(files["safetensors"]))
    buffer = io.BytesIO()
    torch.save({**state, "junk": torch.zeros(64 * MB)}, buffer)
    del state
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(files["deflated-pt"], "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
    return files


def write_zeros_npz(path: Path, declared_bytes: int, chunk: int = 4 * MB) -> int:
    """The bomb, written in chunks (this process never holds the arrays). Returns N."""
    n = declared_bytes // (28 * 28)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, dtype, shape in (("images.npy", "|u1", (n, 28, 28)), ("labels.npy", "<i8", (n,))):
            header = np.lib.format.header_data_from_array_1_0(np.empty(0, dtype))
            header.update(shape=shape)
            with archive.open(name, "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                left = int(np.prod(shape)) * np.dtype(dtype).itemsize
                zeros = bytes(min(chunk, left))
                while left:
                    member.write(zeros[: min(chunk, left)])
                    left -= min(chunk, left)
    return n


def measure(method: str, path: Path, child: str = CHILD) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", child, method, str(path)], capture_output=True, text=True, env=env, check=True
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="declared MiB of images")
    parser.add_argument("--weights", action="store_true", help="also the model uploads (vgg16_bn)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            path = Path(folder) / f"bomb-{size}.npz"
            n = write_zeros_npz(path, size * MB)
            for method in ("loader", "streamed"):
                result = measure(method, path)
                assert result["n"] == n
                rows.append({"declared_mib": size, "file_bytes": path.stat().st_size, "method": method, **result})
                print(
                    f"{size:5d} MiB declared, {path.stat().st_size:>9,d} bytes on disk, {method:8s}: "
                    f"peak RSS +{result['growth_mb']:7.1f} MB in {result['seconds']:5.2f} s"
                )
            path.unlink()
        if args.weights:
            sys.path.insert(0, str(ROOT))
            for kind, path in write_weights(Path(folder)).items():
                for method in ("whole", "streamed"):
                    result = measure(method, path, WEIGHTS_CHILD)
                    rows.append({"file": kind, "file_bytes": path.stat().st_size, "method": method, **result})
                    print(
                        f"vgg16_bn {kind:11s} {path.stat().st_size:>11,d} bytes on disk, {method:8s}: "
                        f"peak RSS +{result['growth_mb']:7.1f} MB in {result['seconds']:5.2f} s -> {result['n']}"
                    )
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
