"""Tiny image-folder archives built in memory for the tests (zip and tar), and a hostile corpus."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib

import numpy as np

SIZES = [(20, 16), (12, 30), (24, 24)]  # mixed on purpose: the converter resizes


def png_bytes(width: int, height: int, value: int, mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(value)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    pixels = np.clip(rng.normal(value, 10, size=shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG signature and IHDR declaring ``width`` x ``height`` RGB pixels, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def class_files(prefix: str = "") -> dict[str, bytes]:
    """2 classes x 3 PNGs of different sizes: cats dark, dogs bright (a network can tell them apart)."""
    files = {}
    for label, (name, value) in enumerate((("cat", 40), ("dog", 210))):
        for i, (w, h) in enumerate(SIZES):
            files[f"{prefix}{name}/{i}.png"] = png_bytes(w, h, value + i + label)
    return files


def zip_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0x20
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None, mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def hostile_cases() -> list[tuple[str, bytes, str]]:
    """(case, archive bytes, the member or words the refusal must name)."""
    good = class_files()
    truncated = png_bytes(20, 20, 9)[:60]
    many = {f"cat/{i}.png": b"x" for i in range(40)}
    return [
        ("zip path traversal", zip_bytes({**good, "../../etc/evil.png": good["cat/0.png"]}), "../../etc/evil.png"),
        ("tar path traversal", tar_bytes({**good, "cat/../../evil.png": good["cat/0.png"]}), "cat/../../evil.png"),
        ("tar absolute path", tar_bytes({**good, "/etc/cron.d/x.png": good["cat/0.png"]}), "/etc/cron.d/x.png"),
        ("zip symlink", zip_bytes(good, symlinks={"dog/link.png": "/etc/passwd"}), "dog/link.png"),
        ("tar symlink", tar_bytes(good, symlinks={"dog/link.png": "/etc/passwd"}), "dog/link.png"),
        ("decompression bomb", zip_bytes({**good, "dog/bomb.png": bomb_png()}), "'dog/bomb.png' declares more pixels"),
        ("pixel limit", zip_bytes({**good, "dog/big.png": bomb_png(6000, 6000)}), "6000x6000 = 36000000 pixels"),
        ("too many files", zip_bytes({**good, **many}), "over the limit of 30"),
        ("corrupt image", tar_bytes({**good, "dog/broken.png": truncated}), "dog/broken.png"),
        ("not an image", zip_bytes({**good, "cat/notes.txt": b"hello"}), "cat/notes.txt"),
        ("no class folders", zip_bytes({"a.png": good["cat/0.png"], "b.png": good["dog/0.png"]}), "a.png"),
        ("too deep", zip_bytes({**good, "a/b/c/d/e.png": good["cat/0.png"]}), "a/b/c/d/e.png"),
        ("long name", zip_bytes({**good, "cat/" + "n" * 300 + ".png": good["cat/0.png"]}), "over 255"),
        ("one class", zip_bytes({k: v for k, v in good.items() if k.startswith("cat/")}), "2 class folders"),
        ("not an archive", b"just some text, not an archive at all", "not a .zip or .tar"),
    ]
