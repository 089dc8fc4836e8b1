"""Parallel decoding of PNG/JPEG bytes into uint8 arrays (Pillow + a thread pool)."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from sfw_jax._progress import progress_bar
from sfw_jax.training.datasets._errors import DataFormatError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CHUNK = 512
_PROGRESS_MIN = 2000


def decode_image(
    data: bytes, *, name: str, channels: int | None = None, size: int | None = None
) -> np.ndarray:
    """Decode one PNG/JPEG into ``uint8 [H, W, C]``.

    Args:
      data: encoded file content.
      name: file name used in error messages.
      channels: 1 (grayscale), 3 (RGB) or None (1 for grayscale files, else 3).
      size: if given, resize to ``size x size`` (bilinear, antialiased).

    Raises:
      DataFormatError: naming ``name`` when the bytes are not a decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if channels == 1 or (channels is None and mode in ("L", "1", "I;16", "I", "F")):
                target = "L"
            else:
                target = "RGB"
            if mode != target:
                img = img.convert(target)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise DataFormatError(
            f"{name}: cannot decode image ({type(err).__name__}: {err}); expected a PNG or JPEG file"
        ) from err
    return arr[..., None] if arr.ndim == 2 else arr


def decode_images(
    names: Sequence[str],
    read: Callable[[str], bytes],
    *,
    channels: int | None = None,
    size: int | None = None,
    num_workers: int | None = None,
    desc: str = "decoding images",
    location: str = "",
) -> np.ndarray:
    """Read and decode many images in parallel into one ``uint8 [N, H, W, C]`` array.

    Args:
      names: N identifiers passed to ``read`` (and shown in error messages), in output order.
      read: returns the encoded bytes for a name.
      channels, size: see ``decode_image``. With ``channels=None`` a mix of grayscale and RGB
        files is returned as RGB.
      num_workers: threads (default ``min(8, os.cpu_count())``).
      desc: progress-bar label (a bar is shown from 2000 images on, on a terminal).
      location: prefix (folder or archive path) of names in error messages.

    Raises:
      DataFormatError: for an undecodable file, or for images of different sizes when
        ``size`` is None (names the first file whose size differs).
    """
    if not names:
        raise ValueError("decode_images needs at least one image name")
    workers = num_workers or min(8, os.cpu_count() or 1)
    chunks = [names[i : i + _CHUNK] for i in range(0, len(names), _CHUNK)]

    def work(chunk: Sequence[str]) -> list[np.ndarray]:
        return [
            decode_image(read(n), name=_where(location, n), channels=channels, size=size)
            for n in chunk
        ]

    arrays: list[np.ndarray] = []
    with progress_bar(len(names), desc, enabled=len(names) >= _PROGRESS_MIN, unit="img") as bar:
        if workers <= 1 or len(chunks) == 1:
            results = map(work, chunks)
            for part in results:
                arrays.extend(part)
                bar.update(len(part))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for part in pool.map(work, chunks):
                    arrays.extend(part)
                    bar.update(len(part))
    return _stack([_where(location, n) for n in names], arrays)


def _where(location: str, name: str) -> str:
    return f"{location}/{name}" if location else name


def _stack(names: Sequence[str], arrays: list[np.ndarray]) -> np.ndarray:
    if any(a.shape[-1] == 3 for a in arrays) and any(a.shape[-1] == 1 for a in arrays):
        arrays = [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in arrays]
    first = arrays[0].shape
    for name, arr in zip(names, arrays):
        if arr.shape != first:
            raise DataFormatError(
                f"{name}: image is {arr.shape[1]}x{arr.shape[0]} ({arr.shape[2]} channels) but "
                f"{names[0]} is {first[1]}x{first[0]} ({first[2]} channels); expected equal sizes "
                "(pass image_size=... to resize)"
            )
    return np.stack(arrays)
