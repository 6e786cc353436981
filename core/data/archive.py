"""An archive of class folders (``.zip`` or ``.tar``) turned into the ``npz`` dataset's tensor file.

The ImageFolder layout: ``class_name/image`` (optionally under one common top folder), or
``train/class_name/image`` with ``val/`` or ``test/`` beside it for a split of the user's own. Nothing
is extracted to disk: ``tarfile``'s extraction filter has known bypasses on Python 3.11.7
(docs/ARCHITECTURE.md, Security facts), so members are read as byte streams
(``ZipFile.open`` / ``TarFile.extractfile``, regular files only) and decoded by PIL from memory.
Links, devices, absolute and ``..`` paths are refused naming the member, as are archives over the
limits on member count, declared bytes, name length, nesting, per-image size and pixels (the
declared width x height is read from the header and checked before any pixel is decoded; PIL's
own ``DecompressionBombWarning`` is raised as an error on top).

Every image becomes uint8 ``(C, H, W)``: converted to ``channels`` (1: grey, 3: RGB; alpha is
dropped), then, when ``image_size`` is given, resized so its shorter side is ``image_size`` and
centre-cropped to a square (torchvision's ``resize`` + ``center_crop``, the same transform the
local ``imagefolder`` dataset applies), so mixed sizes are fine. Without ``image_size`` every image
must have the first one's size, else it is refused naming the file. Labels are the index of the
class folder in sorted order (ImageFolder's rule). The output ``.npz`` (``images``, ``labels``,
``test_images``/``test_labels`` for a split, ``class_names``) is written image by image into ``.npy``
files and zipped from them in chunks, so memory stays one image whatever the archive holds.
"""

from __future__ import annotations

import functools
import io
import struct
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.errors import CoreError

FIELD = "file"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLITS_TEST = ("val", "test")
_IGNORED_PARTS = ("__MACOSX",)  # macOS zip metadata, never images


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may hold; every limit is checked from headers before data is read."""

    max_files: int = 50_000  # members of any kind, directories included
    max_total_bytes: int = 1 << 30  # declared uncompressed bytes of all members, and of the output arrays
    max_member_bytes: int = 32 << 20  # one image file
    max_image_pixels: int = 25_000_000  # declared width x height of one image (5000 x 5000)
    max_name_chars: int = 1024  # a member's whole path
    max_part_chars: int = 255  # one path component
    max_depth: int = 4  # path components: top folder / split / class / image


def _refuse(message: str) -> CoreError:
    return CoreError("invalid_archive", FIELD, message)


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    open: Callable[[], Any]  # a binary stream of the member's bytes (None: not a file)


def _check_name(name: str, limits: ArchiveLimits) -> PurePosixPath | None:
    """The member's path, or None for entries that are never images (macOS metadata, hidden files)."""
    if len(name) > limits.max_name_chars:
        raise _refuse(f"member name {name[:80]!r}... is {len(name)} characters, over {limits.max_name_chars}")
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refuse(f"member {name!r}: absolute paths, drive letters and backslashes are refused")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise _refuse(f"member {name!r}: '..' in a path is refused")
    parts = [p for p in path.parts if p != "."]
    if len(parts) > limits.max_depth:
        raise _refuse(f"member {name!r} is nested {len(parts)} levels deep, over {limits.max_depth}")
    for part in parts:
        if len(part) > limits.max_part_chars:
            raise _refuse(f"member {name!r}: a path component is over {limits.max_part_chars} characters")
    if not parts or any(p in _IGNORED_PARTS or p.startswith(".") for p in parts):
        return None
    return PurePosixPath(*parts)


def _zip_members(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[tuple[PurePosixPath, _Member]]:
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise _refuse(f"the archive holds {len(infos)} members, over the limit of {limits.max_files}")
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise _refuse(f"the archive unpacks to {total} bytes, over the limit of {limits.max_total_bytes}")
    out = []
    for info in infos:
        path = _check_name(info.filename, limits)
        mode = (info.external_attr >> 16) & 0o170000
        if mode and mode not in (0o100000, 0o040000):  # a symlink (0o120000), device or fifo
            raise _refuse(f"member {info.filename!r} is a link or special file (mode {oct(mode)}); only files")
        if path is None or info.is_dir():
            continue
        out.append((path, _Member(info.filename, info.file_size, functools.partial(archive.open, info))))
    return out


def _tar_members(archive: tarfile.TarFile, limits: ArchiveLimits) -> list[tuple[PurePosixPath, _Member]]:
    out = []
    total = 0
    for count, info in enumerate(archive, start=1):  # headers only, read lazily
        if count > limits.max_files:
            raise _refuse(f"the archive holds more than {limits.max_files} members, the limit")
        path = _check_name(info.name, limits)
        if info.isdir():
            continue
        if not info.isreg():
            kind = "link" if info.issym() or info.islnk() else "device, fifo or other special member"
            raise _refuse(f"member {info.name!r} is a {kind}; only regular files are read")
        total += info.size
        if total > limits.max_total_bytes:
            raise _refuse(f"the archive unpacks to more than {limits.max_total_bytes} bytes, the limit")
        if path is None:
            continue
        out.append((path, _Member(info.name, info.size, functools.partial(archive.extractfile, info))))
    return out


@dataclass(frozen=True)
class _Layout:
    classes: list[str]
    train: list[tuple[_Member, int]]
    test: list[tuple[_Member, int]]


def _layout(members: list[tuple[PurePosixPath, _Member]]) -> _Layout:
    """ImageFolder's reading of the member paths, refusing what does not fit, naming the member."""
    if not members:
        raise _refuse("the archive holds no files; expected class_name/image files")
    for path, member in members:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise _refuse(
                f"member {member.name!r} is not an image file (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
    parts = [path.parts for path, _ in members]
    while len({p[0] for p in parts}) == 1 and all(len(p) >= 3 for p in parts):
        parts = [p[1:] for p in parts]  # one common top folder ("pets/cat/1.png")
    tops = {p[0] for p in parts}
    test_name = next((s for s in SPLITS_TEST if s in tops), None)
    split = "train" in tops and test_name is not None
    want = 3 if split else 2
    groups: dict[str, dict[str, list[_Member]]] = {}
    for p, (_, member) in zip(parts, members, strict=True):
        if len(p) != want:
            where = "split/class_name/image" if split else "class_name/image"
            if len(p) < want:
                raise _refuse(f"member {member.name!r} is not inside a class folder; the archive must hold {where}")
            raise _refuse(f"member {member.name!r} is nested deeper than {where}")
        key = p[0] if split else "train"
        if split and key not in ("train", test_name):
            raise _refuse(f"member {member.name!r} is outside 'train/' and '{test_name}/'")
        groups.setdefault(key, {}).setdefault(p[-2], []).append(member)
    classes = sorted(groups["train"])
    if split and sorted(groups[str(test_name)]) != classes:
        raise _refuse(f"train classes {classes} differ from {test_name} classes {sorted(groups[str(test_name)])}")
    if len(classes) < 2:
        raise _refuse(f"need at least 2 class folders, found {classes}")

    def ordered(group: dict[str, list[_Member]]) -> list[tuple[_Member, int]]:
        return [(m, i) for i, c in enumerate(classes) for m in sorted(group[c], key=lambda m: m.name)]

    return _Layout(classes, ordered(groups["train"]), ordered(groups[str(test_name)]) if split else [])


def _decode(member: _Member, channels: int, image_size: int | None, limits: ArchiveLimits) -> np.ndarray:
    """One member's bytes, checked and decoded to a uint8 (C, H, W) array."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as tvf

    if member.size > limits.max_member_bytes:
        raise _refuse(f"member {member.name!r} is {member.size} bytes, over the limit of {limits.max_member_bytes}")
    try:
        stream = member.open()
        if stream is None:
            raise _refuse(f"member {member.name!r} cannot be read as a file")
        with stream:
            data = stream.read(limits.max_member_bytes + 1)
    except (
        RuntimeError,
        NotImplementedError,
        OSError,
        EOFError,
        zlib.error,
        zipfile.BadZipFile,
        tarfile.TarError,
    ) as err:
        raise _refuse(f"member {member.name!r} cannot be read ({type(err).__name__}: {str(err)[:200]})") from err
    if len(data) > limits.max_member_bytes:
        raise _refuse(f"member {member.name!r} holds more than {limits.max_member_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise _refuse(
                    f"member {member.name!r} declares {width}x{height} = {width * height} pixels, over the limit "
                    f"of {limits.max_image_pixels} (decompression bomb?); refused before decoding"
                )
            decoded = image.convert("L" if channels == 1 else "RGB")  # decodes (the first frame)
    except CoreError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # PIL's own header check
        raise _refuse(
            f"member {member.name!r} declares more pixels than allowed (decompression bomb?): {err}; refused "
            "before decoding"
        ) from err
    except UnidentifiedImageError as err:
        raise _refuse(f"member {member.name!r} is not a readable image ({err})") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # truncated or corrupt data
        raise _refuse(f"member {member.name!r} is a corrupt image ({type(err).__name__}: {err})") from err
    if image_size:
        decoded = tvf.center_crop(tvf.resize(decoded, [image_size]), [image_size, image_size])
    array = np.asarray(decoded, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _write(
    entries: list[tuple[_Member, int]],
    folder: Path,
    key: str,
    channels: int,
    image_size: int | None,
    limits: ArchiveLimits,
    shape: tuple[int, ...] | None,
) -> tuple[Path, Path, tuple[int, ...]]:
    """Decode ``entries`` into ``key.npy``, written sequentially (its header once the first image gives
    the shape, then each image's bytes in order: one image in memory), and ``key``'s labels; returns
    the image shape."""
    path = folder / f"{key}.npy"
    first_name = ""
    with open(path, "wb") as out:
        for index, (member, _label) in enumerate(entries):
            array = np.ascontiguousarray(_decode(member, channels, image_size, limits))
            if index == 0:
                if shape is not None and array.shape != shape:
                    raise _refuse(_mixed(member.name, array.shape, "the training images", shape))
                shape, first_name = array.shape, member.name
                total = len(entries) * array.size
                if total > limits.max_total_bytes:
                    raise _refuse(
                        f"{len(entries)} images of {array.shape} make {total} bytes, over {limits.max_total_bytes}"
                    )
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
                np.lib.format.write_array_header_2_0(out, {**header, "shape": (len(entries), *array.shape)})
            elif array.shape != shape:
                raise _refuse(_mixed(member.name, array.shape, first_name, shape))
            out.write(array.tobytes())
    assert shape is not None
    label_key = "labels" if key == "images" else "test_labels"
    np.save(folder / f"{label_key}.npy", np.asarray([label for _, label in entries], dtype=np.int64))
    return path, folder / f"{label_key}.npy", shape


def _mixed(name: str, got: tuple[int, ...], first: str, want: tuple[int, ...] | None) -> str:
    """Sizes said as width x height (the arrays are C, H, W)."""
    first_size = f"{want[2]}x{want[1]}" if want else "another size"
    return (
        f"member {name!r} is {got[2]}x{got[1]} but {first!r} is {first_size}; "
        "give image_size to resize and centre-crop every image to one size"
    )


def _zip_entries(path: Path) -> int | None:
    """The member count a zip's end-of-central-directory record declares (zip64 too), read before
    ``ZipFile`` parses the directory: a 200 MB upload can list millions of tiny members, and parsing
    them would cost gigabytes of ``ZipInfo`` objects before any count could be checked."""
    with open(path, "rb") as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return None
        (entries,) = struct.unpack("<H", tail[at + 10 : at + 12])
        locator = tail.rfind(b"PK\x06\x07", 0, at)
        if entries != 0xFFFF or locator < 0 or len(tail) < locator + 20:
            return int(entries)
        (offset,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
        f.seek(offset)
        record = f.read(40)
        if len(record) < 40 or record[:4] != b"PK\x06\x06":
            return None
        return int(struct.unpack("<Q", record[32:40])[0])


def _open_members(path: Path, limits: ArchiveLimits, stack: list[Any]) -> list[tuple[PurePosixPath, _Member]]:
    if zipfile.is_zipfile(path):
        declared = _zip_entries(path)
        if declared is not None and declared > limits.max_files:
            raise _refuse(f"the archive holds {declared} members, over the limit of {limits.max_files}")
        archive: Any = zipfile.ZipFile(path)
        stack.append(archive)
        return _zip_members(archive, limits)
    try:
        archive = tarfile.open(path, mode="r:*")  # plain, gzip, bz2 or xz; read, never extracted
    except (tarfile.TarError, OSError, EOFError) as err:
        raise _refuse(f"not a .zip or .tar archive ({type(err).__name__})") from err
    stack.append(archive)
    return _tar_members(archive, limits)


def archive_to_npz(
    path: str | Path,
    out: str | Path,
    image_size: int | None = None,
    channels: int = 3,
    limits: ArchiveLimits | None = None,
) -> dict[str, Any]:
    """Convert the archive at ``path`` to the ``npz`` dataset file ``out``.

    Returns ``{"classes", "n_train", "n_test", "input_shape"}``; raises ``CoreError("invalid_archive",
    "file", ...)`` naming the member for anything refused (and writes nothing at ``out`` then)."""
    if channels not in (1, 3):
        raise CoreError("invalid_archive", "channels", f"channels must be 1 or 3, not {channels}")
    if image_size is not None and not 8 <= image_size <= 4096:
        raise CoreError("invalid_archive", "image_size", f"image_size must lie in 8..4096, not {image_size}")
    limits = limits or ArchiveLimits()
    stack: list[Any] = []
    try:
        members = _open_members(Path(path), limits, stack)
        layout = _layout(members)
        with tempfile.TemporaryDirectory(dir=Path(out).parent) as tmp:
            folder = Path(tmp)
            arrays = {}
            arrays["images"], arrays["labels"], shape = _write(
                layout.train, folder, "images", channels, image_size, limits, None
            )
            if layout.test:
                arrays["test_images"], arrays["test_labels"], _ = _write(
                    layout.test, folder, "test_images", channels, image_size, limits, shape
                )
            np.save(folder / "class_names.npy", np.asarray(layout.classes, dtype=str))
            arrays["class_names"] = folder / "class_names.npy"
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as npz:
                for key, file in arrays.items():
                    npz.write(file, f"{key}.npy")  # streamed in chunks by zipfile
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        Path(out).unlink(missing_ok=True)
        raise _refuse(f"not a readable archive ({type(err).__name__}: {str(err)[:200]})") from err
    except BaseException:
        Path(out).unlink(missing_ok=True)
        raise
    finally:
        for archive in stack:
            archive.close()
    return {
        "classes": layout.classes,
        "n_train": len(layout.train),
        "n_test": len(layout.test),
        "input_shape": list(shape),
    }


__all__ = ["ArchiveLimits", "IMAGE_SUFFIXES", "archive_to_npz"]
