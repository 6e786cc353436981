"""An image archive converted to the npz dataset file: time per image and the converting process's memory.

Builds a .zip and a .tar of ``N`` PNGs (10 classes, mixed sizes 48..96 px, RGB) in a temp folder, then
in a fresh child process per archive runs ``core.data.archive.archive_to_npz`` (image_size 64,
3 channels) and reports seconds, images per second and the child's peak RSS above its own baseline
(after imports), next to the output size: memory stays about one image plus the libraries, whatever N
(the arrays are written image by image into .npy files). Last, the time to refuse a 50,000 x 50,000
PNG header (the bomb) inside an otherwise valid archive.

    python bench/archive_upload.py [N]        # N = 2000 by default; under a minute on one core
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from archive_helpers import bomb_png, png_bytes, tar_bytes, zip_bytes


def _convert(source: str, out: str, queue: mp.Queue) -> None:
    import PIL.Image  # noqa: F401 - the decoders' imports are not the conversion's memory
    import torchvision.transforms.functional  # noqa: F401

    from core.data.archive import archive_to_npz

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    info = archive_to_npz(source, out, image_size=64, channels=3)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"seconds": seconds, "rss_above_baseline_mb": (peak - base) / 1024, "n": info["n_train"]})


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    files = {f"class{i % 10}/{i}.png": png_bytes(48 + (i * 7) % 49, 48 + (i * 13) % 49, i % 250) for i in range(n)}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind, pack in (("zip", zip_bytes), ("tar", tar_bytes)):
            source = folder / f"images.{kind}"
            source.write_bytes(pack(files))
            out = folder / f"{kind}.npz"
            queue: mp.Queue = ctx.Queue()
            child = ctx.Process(target=_convert, args=(str(source), str(out), queue))
            child.start()
            row = queue.get()
            child.join()
            row |= {
                "archive": kind,
                "archive_mb": round(source.stat().st_size / 2**20, 1),
                "npz_mb": round(out.stat().st_size / 2**20, 1),
                "images_per_s": round(row["n"] / row["seconds"]),
            }
            print(json.dumps(row), flush=True)
        import torchvision.transforms.functional  # noqa: F401 - warm: the refusal, not the import, is timed

        from core.data.archive import archive_to_npz
        from core.errors import CoreError

        bomb = folder / "bomb.zip"
        bomb.write_bytes(zip_bytes({"a/1.png": png_bytes(8, 8, 1), "b/1.png": bomb_png()}))
        start = time.perf_counter()
        try:
            archive_to_npz(bomb, folder / "bomb.npz", image_size=64)
        except CoreError as err:
            print(
                json.dumps({"bomb_refused_ms": round((time.perf_counter() - start) * 1000, 1), "message": err.message})
            )


if __name__ == "__main__":
    main()
