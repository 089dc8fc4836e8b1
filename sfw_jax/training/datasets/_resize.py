"""Resizing of in-memory uint8 image arrays (for array sources given ``image_size``)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``uint8 [N, H, W, C]`` images to ``[N, size, size, C]`` (bilinear, antialiased).

    Returns ``images`` unchanged when they already have that size.
    """
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, size, size, c), np.uint8)
    for i in range(n):
        img = Image.fromarray(images[i, ..., 0] if c == 1 else images[i])
        arr = np.asarray(img.resize((size, size), Image.BILINEAR))
        out[i] = arr[..., None] if c == 1 else arr
    return out
