"""On-device image augmentation and normalisation in pure JAX (jit-able, vectorised).

All functions take a batch ``images`` of shape ``[N, H, W, C]`` (uint8 or float) and keep its
shape; ``pad`` is a Python int (mark it static under ``jax.jit``, e.g. with
``functools.partial``). Randomness comes from a JAX PRNG key ``rng``; the draws are exposed
(``_sample_crop_offsets``, ``_sample_flip_mask``) so they can be reproduced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["normalize", "random_crop", "random_flip", "random_crop_flip"]


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``(images / 255 - mean) / std`` as float32.

    Args:
      images: ``[..., C]`` uint8 pixel values 0..255 (any numeric dtype is accepted).
      mean, std: ``[C]`` per-channel statistics in [0, 1] scale (e.g. ``DatasetInfo.mean``).

    Returns:
      float32 array with the shape of ``images``.

    Raises:
      ValueError: if ``mean`` or ``std`` is not ``[C]`` with ``C = images.shape[-1]``.
    """
    images = jnp.asarray(images)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    channels = images.shape[-1]
    for arg, value in (("mean", mean), ("std", std)):
        if value.shape != (channels,):
            raise ValueError(
                f"normalize: {arg} has shape {value.shape}, expected ({channels},) to match the "
                f"channel axis of images {images.shape}"
            )
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def _check_batch(images: jax.Array, fn: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{fn}: images must be [N, H, W, C]; got shape {images.shape}")


def _check_pad(pad: int, fn: str) -> None:
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"{fn}: pad must be a Python int >= 0 (static under jit); got {pad!r}")


def _sample_crop_offsets(rng: jax.Array, num: int, pad: int) -> jax.Array:
    """Crop offsets ``int32 [num, 2]`` = ``(dy, dx)``, each uniform in ``0..2*pad``.

    Offset ``(dy, dx)`` selects rows ``dy:dy+H`` and columns ``dx:dx+W`` of the zero-padded
    image; ``(pad, pad)`` is the identity crop.
    """
    _check_pad(pad, "_sample_crop_offsets")
    return jax.random.randint(rng, (num, 2), 0, 2 * pad + 1, dtype=jnp.int32)


def _crop_with_offsets(images: jax.Array, offsets: jax.Array, pad: int) -> jax.Array:
    """Zero-pad ``images`` by ``pad`` pixels per side and crop each back at ``offsets[i]``.

    Args:
      images: ``[N, H, W, C]``.
      offsets: int ``[N, 2]`` of ``(dy, dx)`` in ``0..2*pad``.
      pad: padding in pixels.

    Returns:
      ``[N, H, W, C]`` with the dtype of ``images``.
    """
    images = jnp.asarray(images)
    _check_batch(images, "_crop_with_offsets")
    _check_pad(pad, "_crop_with_offsets")
    if offsets.shape != (images.shape[0], 2):
        raise ValueError(
            f"_crop_with_offsets: offsets has shape {offsets.shape}, expected "
            f"({images.shape[0]}, 2)"
        )
    if pad == 0:
        return images
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop_one(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop_one)(padded, offsets)


def random_crop(rng: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Random translation: zero-pad by ``pad`` and crop back to ``H x W`` at per-image offsets
    drawn by ``_sample_crop_offsets(rng, N, pad)``. Same shape and dtype as ``images``."""
    images = jnp.asarray(images)
    _check_batch(images, "random_crop")
    _check_pad(pad, "random_crop")
    return _crop_with_offsets(images, _sample_crop_offsets(rng, images.shape[0], pad), pad)


def _sample_flip_mask(rng: jax.Array, num: int) -> jax.Array:
    """Bool ``[num]``: which images ``random_flip`` mirrors (each with probability 0.5)."""
    return jax.random.bernoulli(rng, 0.5, (num,))


def _flip_with_mask(images: jax.Array, mask: jax.Array) -> jax.Array:
    """Mirror (left-right) the images where ``mask`` (bool ``[N]``) is True."""
    images = jnp.asarray(images)
    _check_batch(images, "_flip_with_mask")
    if mask.shape != (images.shape[0],):
        raise ValueError(
            f"_flip_with_mask: mask has shape {mask.shape}, expected ({images.shape[0]},)"
        )
    return jnp.where(mask[:, None, None, None], images[:, :, ::-1, :], images)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Horizontal flip of each image with probability 0.5 (mask from ``_sample_flip_mask``)."""
    images = jnp.asarray(images)
    _check_batch(images, "random_flip")
    return _flip_with_mask(images, _sample_flip_mask(rng, images.shape[0]))


def random_crop_flip(rng: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """``random_crop`` then ``random_flip`` (standard CIFAR augmentation); ``rng`` is split
    into ``(crop_key, flip_key) = jax.random.split(rng)``."""
    crop_key, flip_key = jax.random.split(rng)
    return random_flip(flip_key, random_crop(crop_key, images, pad))
