"""Tests for sfw_jax.training.datasets: every source format, validation carve-out, statistics, batching.

Local formats are written as tiny files to tmp_path and read back value by value (PNG is
lossless, so decoded pixels must equal what was written).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sfw_jax.training import datasets as data
from sfw_jax.training.datasets import DataFormatError, DatasetUnavailableError, Split, load_dataset
from sfw_jax.training.datasets import _image_table as image_table
from sfw_jax.training.datasets._splits import carve_validation, channel_stats

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


# ----------------------------------------------------------------------------- writers


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(root: Path, stem: str, array: np.ndarray, compress: bool = True) -> Path:
    raw = _idx_bytes(array)
    path = root / (stem + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def _make_idx(root: Path, compress: bool = True, n_train: int = 30, n_test: int = 7):
    rng = np.random.default_rng(1)
    tr_x = rng.integers(0, 256, (n_train, 5, 4), dtype=np.uint8)
    tr_y = (np.arange(n_train) % 3).astype(np.uint8)
    te_x = rng.integers(0, 256, (n_test, 5, 4), dtype=np.uint8)
    te_y = (np.arange(n_test) % 3).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    _write_idx(root, "train-images-idx3-ubyte", tr_x, compress)
    _write_idx(root, "train-labels-idx1-ubyte", tr_y, compress)
    _write_idx(root, "t10k-images-idx3-ubyte", te_x, compress)
    _write_idx(root, "t10k-labels-idx1-ubyte", te_y, compress)
    return tr_x, tr_y, te_x, te_y


def _cifar_batch(n: int, label_key: str, seed: int, num_classes: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    flat = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane
    labels = [int(v) for v in rng.integers(0, num_classes, n)]
    return {b"data": flat, label_key.encode(): labels, b"batch_label": b"x"}, images, labels


def _pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _make_cifar10(root: Path):
    root.mkdir(parents=True)
    train_images, train_labels = [], []
    for i in range(1, 6):
        batch, imgs, labels = _cifar_batch(4, "labels", seed=i, num_classes=10)
        _pickle(root / f"data_batch_{i}", batch)
        train_images.append(imgs)
        train_labels += labels
    test, test_images, test_labels = _cifar_batch(5, "labels", seed=9, num_classes=10)
    _pickle(root / "test_batch", test)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(root / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return np.concatenate(train_images), np.array(train_labels), test_images, np.array(test_labels)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def _jpg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _make_imagefolder(root: Path, with_val: bool = False, size=(6, 5)):
    """train/{cat,ant,bee} (unsorted creation order), test/..., PNG plus one JPG per split."""
    rng = np.random.default_rng(2)
    written = {}
    counts = {"train": 3, "test": 2, "val": 1}
    splits = ["train", "test"] + (["val"] if with_val else [])
    for split in splits:
        for cls in ("cat", "ant", "bee"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k in range(counts[split]):
                img = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
                (folder / f"{k:04d}.png").write_bytes(_png_bytes(img))
                written[(split, cls, f"{k:04d}.png")] = img
        (root / split / "bee" / "notes.txt").write_text("ignored")
    # one JPEG in train/bee: compared against Pillow's own decode of that file
    jpg = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    (root / "train" / "bee" / "zz.jpg").write_bytes(_jpg_bytes(jpg))
    return written


def _expected_folder_split(root: Path, written: dict, split: str):
    classes = ["ant", "bee", "cat"]
    images, labels = [], []
    for label, cls in enumerate(classes):
        names = sorted(n for (s, c, n) in written if s == split and c == cls)
        if split == "train" and cls == "bee":
            names = sorted(names + ["zz.jpg"])
        for name in names:
            if name.endswith(".png"):
                images.append(written[(split, cls, name)])
            else:
                with Image.open(root / split / cls / name) as img:
                    images.append(np.asarray(img.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels, np.int32)


def _make_tiny_imagenet(root: Path, size: int = 8):
    """Tiny-ImageNet layout; image files are PNG-encoded (lossless) under .JPEG names."""
    rng = np.random.default_rng(3)
    wnids = ["n0300", "n0100", "n0200"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train = {}
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for k in range(2):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            (folder / f"{wnid}_{k}.JPEG").write_bytes(_png_bytes(img))
            train[(wnid, k)] = img
    val_dir = root / "val" / "images"
    val_dir.mkdir(parents=True)
    lines, val = [], {}
    for k, wnid in enumerate(["n0200", "n0100", "n0300", "n0200"]):
        img = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)  # grayscale -> RGB
        name = f"val_{k}.JPEG"
        (val_dir / name).write_bytes(_png_bytes(img))
        lines.append(f"{name}\t{wnid}\t0\t0\t{size - 1}\t{size - 1}")
        val[name] = (img, wnid)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return train, val


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_idx_roundtrip(tmp_path, compress):
    tr_x, tr_y, te_x, te_y = _make_idx(tmp_path / "mnist", compress)
    ds = load_dataset("idx", data_dir=tmp_path / "mnist", val_fraction=0.0)
    np.testing.assert_array_equal(ds.train.images, tr_x[..., None])
    np.testing.assert_array_equal(ds.train.labels, tr_y.astype(np.int32))
    np.testing.assert_array_equal(ds.test.images, te_x[..., None])
    np.testing.assert_array_equal(ds.test.labels, te_y.astype(np.int32))
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
    assert ds.val.images.shape == (0, 5, 4, 1) and ds.val.labels.shape == (0,)
    assert ds.info.image_shape == (5, 4, 1) and ds.info.num_classes == 10
    assert ds.info.name == "mnist" and ds.info.source.startswith("idx:")


def test_idx_autodetected_by_dataset_name_with_fashion_classes(tmp_path):
    _make_idx(tmp_path / "fm")
    ds = load_dataset("fashion_mnist", data_dir=tmp_path, val_fraction=0.0)  # found in sub-folder
    assert ds.info.name == "fashion_mnist"
    assert ds.info.class_names[0] == "T-shirt/top" and ds.info.class_names[9] == "Ankle boot"


def test_idx_label_count_mismatch(tmp_path):
    _make_idx(tmp_path)
    _write_idx(tmp_path, "train-labels-idx1-ubyte", np.zeros(29, np.uint8))
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte.gz has 30 images but .*train-labels-idx1-ubyte.gz has 29 labels"):
        load_dataset("idx", data_dir=tmp_path)


def test_idx_truncated_data(tmp_path):
    _make_idx(tmp_path)
    raw = _idx_bytes(np.zeros((7, 5, 4), np.uint8))[:-3]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte.gz: IDX header dims \(7, 5, 4\) need 140 data bytes but the file has 137"):
        load_dataset("idx", data_dir=tmp_path)


def test_idx_bad_magic(tmp_path):
    _make_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x12\x34\x08\x01abcd"))
    with pytest.raises(DataFormatError, match="t10k-labels-idx1-ubyte.gz: not an IDX file"):
        load_dataset("idx", data_dir=tmp_path)


def test_idx_missing_file(tmp_path):
    _make_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.gz: missing IDX file; expected IDX files"):
        load_dataset("idx", data_dir=tmp_path)


# ----------------------------------------------------------------------------- CIFAR pickles


def test_cifar10_python_roundtrip(tmp_path):
    tr_x, tr_y, te_x, te_y = _make_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar-python", data_dir=tmp_path, val_fraction=0.0)
    np.testing.assert_array_equal(ds.train.images, tr_x)
    np.testing.assert_array_equal(ds.train.labels, tr_y)
    np.testing.assert_array_equal(ds.test.images, te_x)
    np.testing.assert_array_equal(ds.test.labels, te_y)
    assert ds.info.name == "cifar10" and ds.info.num_classes == 10
    assert ds.info.class_names[:3] == ("airplane", "automobile", "bird")
    assert ds.info.image_shape == (32, 32, 3)


def test_cifar100_python_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    train, tr_x, tr_y = _cifar_batch(6, "fine_labels", seed=4, num_classes=100)
    train[b"coarse_labels"] = [0] * 6
    test, te_x, te_y = _cifar_batch(3, "fine_labels", seed=5, num_classes=100)
    _pickle(root / "train", train)
    _pickle(root / "test", test)
    _pickle(root / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    ds = load_dataset("cifar100", data_dir=root, val_fraction=0.0)
    np.testing.assert_array_equal(ds.train.images, tr_x)
    np.testing.assert_array_equal(ds.train.labels, tr_y)
    np.testing.assert_array_equal(ds.test.images, te_x)
    assert ds.info.num_classes == 100 and ds.info.class_names[99] == "c99"
    assert ds.info.source.startswith("cifar-python:")


def test_cifar_missing_batch(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _make_cifar10(root)
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3: missing CIFAR batch file"):
        load_dataset("cifar-python", data_dir=root)


def test_cifar_wrong_shape_and_count(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _make_cifar10(root)
    _pickle(root / "test_batch", {b"data": np.zeros((2, 1000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataFormatError, match=r"test_batch: b'data' has dtype uint8 shape \(2, 1000\), expected uint8 \[N, 3072\]"):
        load_dataset("cifar-python", data_dir=root)
    _pickle(root / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(DataFormatError, match="test_batch: 2 images but 1 labels"):
        load_dataset("cifar-python", data_dir=root)


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _make_cifar10(root)
    (root / "data_batch_1").write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(DataFormatError, match=r"data_batch_1: cannot unpickle .*os.system is not allowed"):
        load_dataset("cifar-python", data_dir=root)


# ----------------------------------------------------------------------------- image folders


def test_imagefolder_roundtrip_png_and_jpg(tmp_path):
    written = _make_imagefolder(tmp_path / "tree")
    ds = load_dataset("imagefolder", data_dir=tmp_path / "tree", val_fraction=0.0, cache_dir=tmp_path / "c")
    assert ds.info.class_names == ("ant", "bee", "cat")
    for split in ("train", "test"):
        images, labels = _expected_folder_split(tmp_path / "tree", written, split)
        got = getattr(ds, split)
        np.testing.assert_array_equal(got.images, images)
        np.testing.assert_array_equal(got.labels, labels)
    assert len(ds.train) == 10 and ds.info.image_shape == (6, 5, 3)


def test_imagefolder_uses_own_val_folder(tmp_path):
    written = _make_imagefolder(tmp_path / "tree", with_val=True)
    ds = load_dataset("imagefolder", data_dir=tmp_path / "tree", val_fraction=0.5, cache_dir=tmp_path / "c")
    images, labels = _expected_folder_split(tmp_path / "tree", written, "val")
    np.testing.assert_array_equal(ds.val.images, images)
    np.testing.assert_array_equal(ds.val.labels, labels)
    assert len(ds.train) == 10  # val_fraction not applied when the source has its own val


def test_imagefolder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    _make_imagefolder(tmp_path / "tree")
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", data_dir=tmp_path / "tree", cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(image_table, "decode_images", no_decoding)
    second = load_dataset("imagefolder", data_dir=tmp_path / "tree", cache_dir=cache)
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)
    assert second.info.class_names == first.info.class_names
    # changing a file changes the fingerprint -> decoding is attempted again
    target = tmp_path / "tree" / "test" / "ant" / "0000.png"
    target.write_bytes(_png_bytes(np.zeros((6, 5, 3), np.uint8)))
    os.utime(target, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("imagefolder", data_dir=tmp_path / "tree", cache_dir=cache)


def test_imagefolder_tar_archive_equals_folder(tmp_path):
    _make_imagefolder(tmp_path / "tree")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="mycopy")  # one top-level folder is stripped
    a = load_dataset("imagefolder", data_dir=tmp_path / "tree", val_fraction=0.0, use_cache=False)
    b = load_dataset("imagefolder", data_dir=archive, val_fraction=0.0, use_cache=False)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert b.info.class_names == ("ant", "bee", "cat") and b.info.name == "tree"


def test_imagefolder_grayscale_png_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("x", "y"):
            (tmp_path / split / cls).mkdir(parents=True)
            img = rng.integers(0, 256, (10, 10, 1), dtype=np.uint8)
            (tmp_path / split / cls / "a.png").write_bytes(_png_bytes(img))
    ds = load_dataset("imagefolder", data_dir=tmp_path, val_fraction=0.0, use_cache=False)
    assert ds.train.images.shape == (2, 10, 10, 1) and ds.info.mean.shape == (1,)
    small = load_dataset("imagefolder", data_dir=tmp_path, val_fraction=0.0, image_size=4, use_cache=False)
    assert small.train.images.shape == (2, 4, 4, 1) and small.info.image_shape == (4, 4, 1)


def test_imagefolder_corrupt_jpeg(tmp_path):
    _make_imagefolder(tmp_path)
    good = _jpg_bytes(np.zeros((6, 5, 3), np.uint8))
    (tmp_path / "test" / "cat" / "broken.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(DataFormatError, match=r"test/cat/broken.jpg: cannot decode image .*expected a PNG or JPEG"):
        load_dataset("imagefolder", data_dir=tmp_path, use_cache=False)


def _load_fails(fmt: str, data_dir, error: type, match: str) -> None:
    """``load_dataset(fmt, data_dir=...)`` raises ``error`` with a message matching ``match``."""
    with pytest.raises(error, match=match):
        load_dataset(fmt, data_dir=data_dir, use_cache=False)


def test_imagefolder_layout_errors(tmp_path):
    _make_imagefolder(tmp_path / "a")
    import shutil

    shutil.rmtree(tmp_path / "a" / "test")
    _load_fails("imagefolder", tmp_path / "a", DataFormatError, r"no 'test' folder found; expected an image-folder tree")
    # test class unknown to train
    _make_imagefolder(tmp_path / "b")
    (tmp_path / "b" / "test" / "dog").mkdir()
    (tmp_path / "b" / "test" / "dog" / "1.png").write_bytes(_png_bytes(np.zeros((6, 5, 3), np.uint8)))
    _load_fails("imagefolder", tmp_path / "b", DataFormatError, r"split 'test' has class folder\(s\) \['dog'\] that train/ lacks")
    # images of different size
    _make_imagefolder(tmp_path / "c")
    (tmp_path / "c" / "test" / "cat" / "big.png").write_bytes(_png_bytes(np.zeros((9, 9, 3), np.uint8)))
    _load_fails("imagefolder", tmp_path / "c", DataFormatError, r"test/cat/big.png: image is 9x9 .* expected equal sizes \(pass image_size")
    # images directly in the split folder
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "1.png").write_bytes(_png_bytes(np.zeros((2, 2, 3), np.uint8)))
    (tmp_path / "d" / "test").mkdir()
    _load_fails("imagefolder", tmp_path / "d", DataFormatError, r"images lie directly in the split folder")


# ----------------------------------------------------------------------------- Tiny-ImageNet


def test_tiny_imagenet_layout(tmp_path):
    train, val = _make_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    ds = load_dataset("tiny-imagenet", data_dir=tmp_path, val_fraction=0.0, use_cache=False)
    assert ds.info.class_names == ("n0100", "n0200", "n0300")
    expected_train = np.stack([train[(w, k)] for w in ("n0100", "n0200", "n0300") for k in range(2)])
    np.testing.assert_array_equal(ds.train.images, expected_train)
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 1, 1, 2, 2])
    index = {"n0100": 0, "n0200": 1, "n0300": 2}
    names = sorted(val)
    np.testing.assert_array_equal(ds.test.images, np.stack([np.repeat(val[n][0], 3, -1) for n in names]))
    np.testing.assert_array_equal(ds.test.labels, [index[val[n][1]] for n in names])
    assert ds.info.image_shape == (8, 8, 3) and ds.info.name == "tiny-imagenet"


def test_tiny_imagenet_resized_and_cached(tmp_path):
    _make_tiny_imagenet(tmp_path / "t")
    ds = load_dataset("tiny-imagenet", data_dir=tmp_path / "t", image_size=4, cache_dir=tmp_path / "c")
    assert ds.test.images.shape == (4, 4, 4, 3) and ds.info.image_shape == (4, 4, 3)
    again = load_dataset("tiny-imagenet", data_dir=tmp_path / "t", image_size=4, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(ds.test.images, again.test.images)
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1


def test_tiny_imagenet_errors(tmp_path):
    _make_tiny_imagenet(tmp_path / "t")
    (tmp_path / "t" / "val" / "images" / "val_3.JPEG").unlink()
    _load_fails("tiny-imagenet", tmp_path / "t", FileNotFoundError, r"val_3.JPEG: listed in val/val_annotations.txt but missing")
    _make_tiny_imagenet(tmp_path / "u")
    (tmp_path / "u" / "val" / "images" / "extra.JPEG").write_bytes(_png_bytes(np.zeros((8, 8, 3), np.uint8)))
    _load_fails("tiny-imagenet", tmp_path / "u", DataFormatError, r"extra.JPEG: image has no line in val/val_annotations.txt")
    (tmp_path / "v").mkdir()
    _load_fails("tiny-imagenet", tmp_path / "v", FileNotFoundError, r"wnids.txt: missing class list; expected Tiny-ImageNet layout")


# ----------------------------------------------------------------------------- digits, names


def test_digits_shapes_and_fixed_test_split():
    a = load_dataset("digits", val_fraction=0.1, seed=0)
    b = load_dataset("digits", val_fraction=0.2, seed=5)
    assert a.train.images.shape[1:] == (8, 8, 1) and a.train.images.dtype == np.uint8
    assert len(a.train) + len(a.val) + len(a.test) == 1797 and len(a.test) == 360
    assert a.info.num_classes == 10 and a.info.class_names == tuple("0123456789")
    assert set(np.unique(a.test.labels)) == set(range(10))
    assert a.train.images.max() == 255 and a.train.images.min() == 0
    np.testing.assert_array_equal(a.test.images, b.test.images)  # test split independent of seed
    assert a.info.source == "sklearn:digits"


def test_digits_rejects_data_dir(tmp_path):
    with pytest.raises(ValueError, match="'digits' ships with scikit-learn"):
        load_dataset("digits", data_dir=tmp_path)


def test_unknown_name_and_empty_data_dir(tmp_path):
    with pytest.raises(ValueError, match="'no_such_dataset_xyz' is neither a local format"):
        load_dataset("no_such_dataset_xyz")
    with pytest.raises(DataFormatError, match=r"holds no recognised local dataset and no prepared TFDS dataset 'cifar10'.*--data-dir"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="data_dir is required"):
        load_dataset("imagefolder")


# ----------------------------------------------------------------------------- TFDS


def test_tfds_mock_data_source():
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed")
    # USE_CODE: generate examples from the builder's features; no metadata files, no TF needed.
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset("mnist", val_fraction=0.25, seed=1)
        with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
            source = tfds.data_source("mnist", split="test")
            expected = np.stack([source[i]["image"] for i in range(20)])
    assert ds.train.images.shape == (15, 28, 28, 1) and ds.val.images.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(ds.test.images, expected)
    assert ds.test.labels.dtype == np.int32 and ds.test.labels.max() < 10
    assert ds.info.num_classes == 10 and ds.info.source == "tfds:mnist"


def test_tfds_missing_gives_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(DatasetUnavailableError, match=r"tensorflow-datasets is not installed.*--data-dir"):
        load_dataset("cifar10")


# ----------------------------------------------------------------------------- validation split


def _unique_split(n=200, classes=4):
    images = np.zeros((n, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    return Split(images, (np.arange(n) % classes).astype(np.int32))


def _ids(split):
    ids = split.images[:, 0, 0, 0].astype(np.int64) + 256 * split.images[:, 0, 1, 0].astype(np.int64)
    return set(ids.tolist())


def test_val_carve_out_reproducible_disjoint_stratified():
    split = _unique_split()
    tr1, va1 = carve_validation(split, 0.1, seed=3)
    tr2, va2 = carve_validation(split, 0.1, seed=3)
    _, va3 = carve_validation(split, 0.1, seed=4)
    np.testing.assert_array_equal(va1.images, va2.images)
    np.testing.assert_array_equal(tr1.labels, tr2.labels)
    assert _ids(va1) != _ids(va3)
    assert _ids(tr1).isdisjoint(_ids(va1)) and _ids(tr1) | _ids(va1) == set(range(200))
    assert len(va1) == 20
    np.testing.assert_array_equal(np.bincount(va1.labels), [5, 5, 5, 5])


def test_val_through_load_dataset(tmp_path):
    _make_idx(tmp_path, n_train=30)
    a = load_dataset("idx", data_dir=tmp_path, val_fraction=0.2, seed=7)
    b = load_dataset("idx", data_dir=tmp_path, val_fraction=0.2, seed=7)
    assert len(a.val) == 6 and len(a.train) == 24
    np.testing.assert_array_equal(a.val.images, b.val.images)
    np.testing.assert_array_equal(np.bincount(a.val.labels), [2, 2, 2])
    rows = {r.tobytes() for r in a.train.images}
    assert not any(r.tobytes() in rows for r in a.val.images)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.1", True, None])
def test_bad_val_fraction(bad):
    with pytest.raises(ValueError, match="val_fraction must be"):
        load_dataset("digits", val_fraction=bad)


def test_val_fraction_leaving_no_train():
    with pytest.raises(ValueError, match="leaves no training examples"):
        carve_validation(_unique_split(n=3), 0.9, seed=0)


def test_mean_std_on_final_train_split():
    ds = load_dataset("digits", val_fraction=0.3, seed=2)
    x = ds.train.images.astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.info.mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ds.info.std, x.std(axis=(0, 1, 2)), rtol=1e-6)
    assert ds.info.mean.dtype == np.float32 and ds.info.std.shape == (1,)
    rgb = np.random.default_rng(0).integers(0, 256, (50, 3, 3, 3), dtype=np.uint8)
    mean, std = channel_stats(rgb, chunk=7)
    np.testing.assert_allclose(mean, (rgb / 255.0).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, (rgb / 255.0).std(axis=(0, 1, 2)), rtol=1e-6)


# ----------------------------------------------------------------------------- batching


def test_iterate_batches_seeded_per_epoch():
    split = _unique_split(n=50)
    e0 = [b for b in data.iterate_batches(split, 8, rng=1, epoch=0)]
    e0_again = [b for b in data.iterate_batches(split, 8, rng=1, epoch=0)]
    e1 = [b for b in data.iterate_batches(split, 8, rng=1, epoch=1)]
    assert len(e0) == 6 == data.num_batches(split, 8)
    for (x, y), (x2, y2) in zip(e0, e0_again):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(e0, e1))
    assert all(x.shape == (8, 2, 2, 1) and x.dtype == np.uint8 and y.dtype == np.int32 for x, y in e0)
    seen = np.concatenate([x[:, 0, 0, 0] for x, _ in e0])
    assert len(set(seen.tolist())) == 48  # no repeats within an epoch


def test_iterate_batches_no_drop_and_no_shuffle():
    split = _unique_split(n=10)
    batches = list(data.iterate_batches(split, 4, rng=None, shuffle=False, drop_last=False))
    assert [len(y) for _, y in batches] == [4, 4, 2] and data.num_batches(10, 4, drop_last=False) == 3
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), split.images)
    gen = np.random.default_rng(0)
    first = list(data.iterate_batches(split, 5, rng=gen))
    second = list(data.iterate_batches(split, 5, rng=gen))
    assert not np.array_equal(first[0][1], second[0][1]) or not np.array_equal(first[0][0], second[0][0])


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        list(data.iterate_batches(_unique_split(n=4), bad, rng=0))


def test_split_validates_arrays():
    with pytest.raises(ValueError, match="Split.images must be a uint8"):
        Split(np.zeros((2, 2, 2, 1), np.float32), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        Split(np.zeros((2, 2, 2, 1), np.uint8), np.zeros(3, np.int32))


# ----------------------------------------------------------------------------- real data


@pytest.mark.integration
def test_cifar10_jpeg_copy(tmp_path):
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"real CIFAR-10 JPEG copy not found at {archive}")
    start = time.perf_counter()
    ds = load_dataset("cifar10", data_dir=archive, val_fraction=0.0, cache_dir=tmp_path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = load_dataset("cifar10", data_dir=archive, val_fraction=0.0, cache_dir=tmp_path)
    cached = time.perf_counter() - start
    print(f"CIFAR-10 JPEG load: first {first:.1f} s, cached {cached:.1f} s")
    assert len(ds.train) == 50000 and len(ds.test) == 10000
    assert ds.info.class_names == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    )
    assert ds.info.image_shape == (32, 32, 3) and ds.train.images.shape == (50000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(ds.train.labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test.labels), [1000] * 10)
    np.testing.assert_allclose(ds.info.mean, [0.4914, 0.4822, 0.4465], atol=0.003)  # CIFAR-10 values
    np.testing.assert_array_equal(again.test.images, ds.test.images)
    assert cached < first


def test_ambiguous_data_dir_and_array_resize(tmp_path):
    _make_idx(tmp_path / "idxdata")
    _make_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataFormatError, match=r"holds several datasets: cifar-10-batches-py \(cifar-python\), idxdata \(idx\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py", image_size=16, val_fraction=0.0)
    assert ds.train.images.shape == (20, 16, 16, 3) and ds.info.image_shape == (16, 16, 3)
