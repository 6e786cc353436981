"""An uploaded archive of class folders becomes the npz dataset file: read as streams, never extracted,
resized to the declared size, and every hostile member refused by name."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from core.data.archive import ArchiveLimits, archive_to_npz
from core.data.datasets import build_datasets
from core.data.npz_check import check_npz
from core.errors import CoreError
from tests.archive_helpers import class_files, hostile_cases, png_bytes, tar_bytes, zip_bytes

LIMITS = ArchiveLimits(max_files=30)


@pytest.mark.parametrize("pack", [zip_bytes, tar_bytes, lambda f: tar_bytes(f, mode="w:gz")])
def test_mixed_sizes_are_resized_and_the_npz_loads(tmp_path: Path, pack) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "upload"
    source.write_bytes(pack(class_files(prefix="pets/")))  # one common top folder is allowed
    out = tmp_path / "data.npz"
    info = archive_to_npz(source, out, image_size=16, channels=3)
    assert info == {"classes": ["cat", "dog"], "n_train": 6, "n_test": 0, "input_shape": [3, 16, 16]}
    with np.load(out, allow_pickle=False) as npz:
        assert npz["images"].shape == (6, 3, 16, 16) and npz["images"].dtype == np.uint8
        assert npz["labels"].tolist() == [0, 0, 0, 1, 1, 1]
        assert npz["class_names"].tolist() == ["cat", "dog"]
        means = npz["images"].reshape(6, -1).mean(axis=1)
    assert (means[:3] < 80).all() and (means[3:] > 170).all()  # the pixels survived, not just the shapes
    assert check_npz(out) == {"name": "npz", "num_classes": 2, "input_shape": (3, 16, 16), "n_samples": 6}
    train, test, data = build_datasets({"name": "npz", "path": str(out), "test_fraction": 0.34}, seed=0)
    assert data["input_shape"] == (3, 16, 16) and (len(train), len(test)) == (4, 2)


def test_train_and_val_folders_are_the_split_and_grey_is_one_channel(tmp_path: Path) -> None:
    files = {f"train/{k}": v for k, v in class_files().items()}
    files |= {"val/cat/a.png": png_bytes(9, 9, 50, "L"), "val/dog/b.png": png_bytes(9, 9, 200, "L")}
    files["README.txt"] = b"x"  # not in a class folder, refused below; and then removed
    source = tmp_path / "a.zip"
    source.write_bytes(zip_bytes(files))
    with pytest.raises(CoreError, match="README.txt"):
        archive_to_npz(source, tmp_path / "o.npz", image_size=8, channels=1)
    assert not (tmp_path / "o.npz").exists()
    del files["README.txt"]
    source.write_bytes(zip_bytes(files))
    info = archive_to_npz(source, tmp_path / "o.npz", image_size=8, channels=1)
    assert (info["n_train"], info["n_test"], info["input_shape"]) == (6, 2, [1, 8, 8])
    with np.load(tmp_path / "o.npz") as npz:
        assert npz["test_labels"].tolist() == [0, 1] and npz["test_images"].shape == (2, 1, 8, 8)


def test_without_image_size_a_mixed_size_image_is_refused_by_name(tmp_path: Path) -> None:
    source = tmp_path / "a.tar"
    source.write_bytes(tar_bytes(class_files()))
    with pytest.raises(CoreError, match=r"'cat/1.png' is 12x30 but 'cat/0.png' is 20x16; give image_size"):
        archive_to_npz(source, tmp_path / "o.npz", channels=3)
    same = {f"{c}/{i}.png": png_bytes(10, 7, 100) for c in ("x", "y") for i in range(2)}
    source.write_bytes(tar_bytes(same))
    assert archive_to_npz(source, tmp_path / "o.npz", channels=3)["input_shape"] == [3, 7, 10]


@pytest.mark.parametrize("case, data, needle", hostile_cases(), ids=[c[0] for c in hostile_cases()])
def test_hostile_archives_are_refused_naming_the_member(tmp_path: Path, case: str, data: bytes, needle: str) -> None:
    source = tmp_path / "upload"
    source.write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(CoreError) as caught:
        archive_to_npz(source, tmp_path / "o.npz", image_size=16, limits=LIMITS)
    assert caught.value.code == "invalid_archive" and caught.value.field == "file"
    assert needle in caught.value.message, caught.value.message
    assert time.perf_counter() - started < 5  # the bomb is refused from its header, not decoded
    assert not (tmp_path / "o.npz").exists() and list(tmp_path.iterdir()) == [source]  # nothing extracted


def test_declared_sizes_over_the_total_are_refused_before_reading(tmp_path: Path) -> None:
    source = tmp_path / "a.zip"
    source.write_bytes(zip_bytes(class_files()))
    with pytest.raises(CoreError, match="unpacks to .* over the limit of 100"):
        archive_to_npz(source, tmp_path / "o.npz", 16, limits=ArchiveLimits(max_total_bytes=100))
    with pytest.raises(CoreError, match=r"6 images of \(3, 64, 64\) make 73728 bytes, over 10000"):  # output too
        archive_to_npz(source, tmp_path / "o.npz", 64, limits=ArchiveLimits(max_total_bytes=10_000))


def test_a_zip_listing_too_many_members_is_refused_before_its_directory_is_parsed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import zipfile

    source = tmp_path / "many.zip"
    source.write_bytes(zip_bytes({f"c{i % 2}/{i}.png": b"" for i in range(40)}))
    parsed = []
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: parsed.append(1))  # the directory parse
    with pytest.raises(CoreError, match="holds 40 members, over the limit of 30"):
        archive_to_npz(source, tmp_path / "o.npz", 16, limits=LIMITS)
    assert parsed == []
