"""Peak memory of checking an uploaded ``.npz``: the loader (what the API ran before) vs the streamed check.

The file is the issue's deflate bomb: uint8 zero ``images`` (N, 28, 28) declaring ``--sizes`` MiB
and int64 zero labels, deflated (256 MiB declared -> ~264 kB on disk). Each check runs in a fresh
child process that has imported everything first; its peak RSS is reset (``/proc/self/clear_refs``)
just before the check, so the growth printed is the check's own. ``loader`` is
``build_datasets({"name": "npz", ...})`` (the API's validation until issue 16), ``streamed`` is
``core.data.npz_check.check_npz`` (the API's validation now). ``--json`` ends with one JSON line.

    python bench/upload_check_memory.py [--sizes 64 256 1024] [--json]
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


def measure(method: str, path: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(path)], capture_output=True, text=True, env=env, check=True
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="declared MiB of images")
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
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
