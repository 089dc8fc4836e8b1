"""Image-folder datasets: ``<split>/<class>/<file>.{png,jpg,jpeg}``, as a folder or a tar archive.

Splits: ``train`` and ``test`` are required, ``val`` (or ``valid`` / ``validation``) is
optional. Classes are the sub-folders of ``train`` in alphabetical order (label = position);
``test`` / ``val`` may only use classes that ``train`` has. Files with other suffixes are
ignored. An archive (``.tar``, ``.tar.gz``, ``.tgz``) holding that tree, possibly below one
top-level folder, is read in memory without unpacking.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np

from sfw_jax.training.datasets._decode import IMAGE_SUFFIXES
from sfw_jax.training.datasets._errors import DataFormatError
from sfw_jax.training.datasets._image_table import DecodeOptions, ImageTable, data_root, load_table
from sfw_jax.training.datasets._types import RawDataset

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGEFOLDER_LAYOUT = (
    "expected an image-folder tree train/<class>/*.png|jpg|jpeg and test/<class>/... "
    "(optional val/ or valid/), or a .tar/.tar.gz archive of it"
)
# listing: split -> class -> sorted list of file identifiers
Listing = dict[str, dict[str, list[str]]]


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file with a tar archive suffix."""
    return Path(path).is_file() and str(path).lower().endswith(ARCHIVE_SUFFIXES)


def looks_like_imagefolder(root: Path) -> bool:
    """Whether ``root`` is a tar archive or a folder with a ``train/`` sub-folder of folders."""
    root = Path(root)
    if is_archive(root):
        return True
    train = root / "train"
    return train.is_dir() and any(entry.is_dir() for entry in os.scandir(train))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _split_dir_name(root_names: set[str], split: str) -> str | None:
    for candidate in SPLIT_DIRS[split]:
        if candidate in root_names:
            return candidate
    return None


def _scan_folder(root: Path) -> tuple[Listing, list[tuple[str, int, int]]]:
    """Listing of a folder tree plus ``(relpath, size, mtime_ns)`` of each image (fingerprint)."""
    top = {e.name for e in os.scandir(root) if e.is_dir()}
    listing: Listing = {}
    stats: list[tuple[str, int, int]] = []
    for split in SPLIT_DIRS:
        dirname = _split_dir_name(top, split)
        if dirname is None:
            continue
        classes: dict[str, list[str]] = {}
        loose = []
        for entry in os.scandir(root / dirname):
            if entry.is_dir():
                files = []
                for item in os.scandir(entry.path):
                    if _is_image(item.name) and item.is_file():
                        rel = f"{dirname}/{entry.name}/{item.name}"
                        st = item.stat()
                        files.append(rel)
                        stats.append((rel, st.st_size, st.st_mtime_ns))
                classes[entry.name] = sorted(files)
            elif _is_image(entry.name):
                loose.append(entry.name)
        if loose and not classes:
            raise DataFormatError(
                f"{root / dirname}: images lie directly in the split folder (e.g. {loose[0]}) "
                f"without class sub-folders; {IMAGEFOLDER_LAYOUT}"
            )
        listing[split] = classes
    stats.sort()
    return listing, stats


def _listing_from_names(root: Path, names: list[str]) -> Listing:
    """Listing from archive member paths (``split/class/file``)."""
    parsed = [name.split("/") for name in names]
    top = {parts[0] for parts in parsed if len(parts) > 1}
    dirnames = {_split_dir_name(top, split): split for split in SPLIT_DIRS}
    dirnames.pop(None, None)
    listing: Listing = {split: {} for split in dirnames.values()}
    loose: dict[str, str] = {}
    for name, parts in zip(names, parsed):
        split = dirnames.get(parts[0])
        if split is None or not _is_image(parts[-1]):
            continue
        if len(parts) == 3:
            listing[split].setdefault(parts[1], []).append(name)
        elif len(parts) == 2:
            loose.setdefault(split, name)
    for split, name in loose.items():
        if not listing[split]:
            raise DataFormatError(
                f"{root}: member {name} lies directly in the split folder without a class "
                f"sub-folder; {IMAGEFOLDER_LAYOUT}"
            )
    return {split: {c: sorted(f) for c, f in classes.items()} for split, classes in listing.items()}


def _table(root: Path, listing: Listing, read) -> ImageTable:
    """Check a listing and turn it into an ``ImageTable`` with alphabetical class labels."""
    for split in ("train", "test"):
        if split not in listing:
            raise DataFormatError(f"{root}: no '{split}' folder found; {IMAGEFOLDER_LAYOUT}")
    train = listing["train"]
    if not train:
        raise DataFormatError(f"{root}/train: no class sub-folders; {IMAGEFOLDER_LAYOUT}")
    class_names = tuple(sorted(train))
    for cls in class_names:
        if not train[cls]:
            raise DataFormatError(
                f"{root}/train/{cls}: class folder has no .png/.jpg/.jpeg files; {IMAGEFOLDER_LAYOUT}"
            )
    index = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, tuple[list[str], np.ndarray]] = {}
    for split, classes in listing.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise DataFormatError(
                f"{root}: split '{split}' has class folder(s) {unknown} that train/ lacks "
                f"(train classes: {list(class_names)}); expected the same class folders"
            )
        names: list[str] = []
        labels: list[int] = []
        for cls in class_names:
            files = classes.get(cls, [])
            names.extend(files)
            labels.extend([index[cls]] * len(files))
        if not names:
            raise DataFormatError(f"{root}: split '{split}' has no images; {IMAGEFOLDER_LAYOUT}")
        splits[split] = (names, np.asarray(labels, np.int32))
    return ImageTable(splits=splits, class_names=class_names, read=read, location=str(root))


def read_archive(path: Path, keep: Callable[[str], bool] = _is_image,
                 layout: str = IMAGEFOLDER_LAYOUT) -> dict[str, bytes]:
    """The file members of a tar archive whose name ``keep`` accepts (default: images), by path,
    with a common top-level folder stripped (unless it is ``train``/``test``); a
    DataFormatError naming ``path`` and ``layout`` when it cannot be read."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and keep(member.name):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        name = member.name
                        while name.startswith("./"):
                            name = name[2:]
                        members[name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataFormatError(f"{path}: cannot read tar archive ({err}); {layout}") from err
    tops = {n.split("/")[0] for n in members}
    if len(tops) == 1 and not (tops & {"train", "test"}) and all("/" in n for n in members):
        strip = len(next(iter(tops))) + 1
        members = {n[strip:]: b for n, b in members.items()}
    return members


def load_imagefolder(root: Path, options: DecodeOptions) -> RawDataset:
    """Load an image-folder tree (folder or tar archive) into uint8 splits, with caching."""
    root = data_root(root, IMAGEFOLDER_LAYOUT)
    resolved = root.resolve()
    if is_archive(root):
        st = resolved.stat()
        fingerprint: object = ("archive", str(resolved), st.st_size, st.st_mtime_ns)

        def build() -> ImageTable:
            members = read_archive(resolved)
            listing = _listing_from_names(root, sorted(members))
            return _table(root, listing, members.__getitem__)

    else:
        listing, stats = _scan_folder(resolved)
        fingerprint = ("folder", str(resolved), tuple(stats))

        def build() -> ImageTable:
            return _table(root, listing, lambda name: (resolved / name).read_bytes())

    label = root.name.split(".")[0] or "imagefolder"
    splits, class_names = load_table(f"imagefolder-{label}", fingerprint, build, options)
    return RawDataset(
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
        class_names=class_names,
        source=f"imagefolder:{root}",
    )
