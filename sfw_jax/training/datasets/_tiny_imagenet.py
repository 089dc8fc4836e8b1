"""Tiny-ImageNet (``tiny-imagenet-200``) in its own layout.

Layout::

    wnids.txt                         one WordNet id per line (200 classes)
    train/<wnid>/images/*.JPEG        500 per class
    val/images/*.JPEG                 10,000 images
    val/val_annotations.txt           tab-separated: file name, wnid, 4 box coordinates

Classes are the wnids in alphabetical order. The labelled ``val`` folder is used as the test
split (the official ``test`` folder has no labels and is ignored). Images are 64x64 RGB
(grayscale files are converted); pass ``image_size=32`` to resize as the SFW reference does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sfw_jax.training.datasets._decode import IMAGE_SUFFIXES
from sfw_jax.training.datasets._errors import DataFormatError
from sfw_jax.training.datasets._image_table import DecodeOptions, ImageTable, data_root, load_table
from sfw_jax.training.datasets._types import RawDataset

TINY_IMAGENET_LAYOUT = (
    "expected Tiny-ImageNet layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG "
    "and val/val_annotations.txt (file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1)"
)


def looks_like_tiny_imagenet(root: Path) -> bool:
    """Whether ``root`` has ``wnids.txt`` and a ``train/`` folder."""
    root = Path(root)
    return (root / "wnids.txt").is_file() and (root / "train").is_dir()


def _images_in(folder: Path) -> list[os.DirEntry]:
    return sorted(
        (e for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()),
        key=lambda e: e.name,
    )


def _read_wnids(root: Path) -> tuple[str, ...]:
    path = root / "wnids.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing class list; {TINY_IMAGENET_LAYOUT}")
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataFormatError(f"{path}: empty or has duplicate wnids; {TINY_IMAGENET_LAYOUT}")
    return tuple(sorted(wnids))


def _read_annotations(root: Path, index: dict[str, int]) -> dict[str, int]:
    path = root / "val" / "val_annotations.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing validation labels; {TINY_IMAGENET_LAYOUT}")
    labels: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataFormatError(
                f"{path}:{lineno}: {line!r} has no tab-separated wnid; {TINY_IMAGENET_LAYOUT}"
            )
        if fields[1] not in index:
            raise DataFormatError(f"{path}:{lineno}: wnid {fields[1]!r} is not in wnids.txt")
        labels[fields[0]] = index[fields[1]]
    return labels


def load_tiny_imagenet(root: Path, options: DecodeOptions) -> RawDataset:
    """Load Tiny-ImageNet (train + labelled val as test) as RGB uint8 splits, with caching."""
    root = data_root(root, TINY_IMAGENET_LAYOUT, folder=True).resolve()
    wnids = _read_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    train_names: list[str] = []
    train_labels: list[int] = []
    stats: list[tuple[str, int, int]] = []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing class folder; {TINY_IMAGENET_LAYOUT}")
        entries = _images_in(folder)
        if not entries:
            raise DataFormatError(f"{folder}: no .JPEG files; {TINY_IMAGENET_LAYOUT}")
        for e in entries:
            rel = f"train/{wnid}/images/{e.name}"
            st = e.stat()
            train_names.append(rel)
            train_labels.append(index[wnid])
            stats.append((rel, st.st_size, st.st_mtime_ns))
    val_folder = root / "val" / "images"
    if not val_folder.is_dir():
        raise FileNotFoundError(f"{val_folder}: missing validation images; {TINY_IMAGENET_LAYOUT}")
    annotations = _read_annotations(root, index)
    val_entries = _images_in(val_folder)
    present = {e.name for e in val_entries}
    missing = sorted(set(annotations) - present)
    if missing:
        raise FileNotFoundError(
            f"{val_folder / missing[0]}: listed in val/val_annotations.txt but missing "
            f"({len(missing)} missing in all)"
        )
    unlabelled = sorted(present - set(annotations))
    if unlabelled:
        raise DataFormatError(
            f"{val_folder / unlabelled[0]}: image has no line in val/val_annotations.txt "
            f"({len(unlabelled)} unlabelled in all); expected one label per image"
        )
    if not val_entries:
        raise DataFormatError(f"{val_folder}: no .JPEG files; {TINY_IMAGENET_LAYOUT}")
    test_names = [f"val/images/{e.name}" for e in val_entries]
    test_labels = [annotations[e.name] for e in val_entries]
    for e, rel in zip(val_entries, test_names):
        st = e.stat()
        stats.append((rel, st.st_size, st.st_mtime_ns))
    fingerprint = ("tiny-imagenet", str(root), tuple(stats))

    def build() -> ImageTable:
        return ImageTable(
            splits={
                "train": (train_names, np.asarray(train_labels, np.int32)),
                "test": (test_names, np.asarray(test_labels, np.int32)),
            },
            class_names=wnids,
            read=lambda name: (root / name).read_bytes(),
            location=str(root),
        )

    rgb = DecodeOptions(
        channels=3,
        image_size=options.image_size,
        cache_dir=options.cache_dir,
        use_cache=options.use_cache,
        num_workers=options.num_workers,
    )
    splits, class_names = load_table("tiny-imagenet", fingerprint, build, rgb)
    return RawDataset(
        train=splits["train"],
        test=splits["test"],
        val=None,
        class_names=class_names,
        source=f"tiny-imagenet:{root}",
    )
