"""Tests for sfw_jax.training.augment: exact crop/flip semantics, shapes, dtypes, jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfw_jax.training import augment


def _images(n=16, h=6, w=5, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    # values 1..255 so zero padding is distinguishable from content
    return rng.integers(1, 256, size=(n, h, w, c)).astype(dtype)


def _np_crop(images, offsets, pad):
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = images.shape[1:3]
    return np.stack([padded[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def test_normalize_values_and_dtype():
    images = _images(n=3, c=2)
    mean = np.array([0.25, 0.5], np.float32)
    std = np.array([0.5, 0.2], np.float32)
    out = augment.normalize(jnp.asarray(images), mean, std)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    expected = (images.astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)


def test_normalize_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"mean has shape \(3,\), expected \(2,\)"):
        augment.normalize(jnp.zeros((1, 2, 2, 2), jnp.uint8), np.zeros(3), np.ones(2))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_crop_matches_numpy_with_same_draws(dtype):
    images = _images(dtype=dtype)
    key = jax.random.PRNGKey(3)
    out = augment.random_crop(key, jnp.asarray(images), pad=2)
    offsets = np.asarray(augment._sample_crop_offsets(key, images.shape[0], 2))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert offsets.min() >= 0 and offsets.max() <= 4
    np.testing.assert_array_equal(np.asarray(out), _np_crop(images, offsets, 2))


def test_random_crop_offsets_recoverable_and_varied():
    """Each output equals exactly one pad+slice of its own input; offsets differ across images."""
    images = _images(n=32, h=8, w=8, c=1)
    out = np.asarray(augment.random_crop(jax.random.PRNGKey(0), jnp.asarray(images), pad=3))
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    found = []
    for i in range(images.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if np.array_equal(padded[i, dy : dy + 8, dx : dx + 8], out[i])
        ]
        assert len(matches) == 1, f"image {i}: {matches}"
        found.append(matches[0])
    assert len(set(found)) > 5
    # the zero padding really enters: some crop is not the identity and contains zeros
    assert any(f != (3, 3) for f in found) and (out == 0).any()


def test_crop_pad_zero_is_identity():
    images = _images()
    out = augment.random_crop(jax.random.PRNGKey(1), jnp.asarray(images), pad=0)
    np.testing.assert_array_equal(np.asarray(out), images)


def test_random_flip_flips_exactly_selected_images():
    images = _images(n=64)
    key = jax.random.PRNGKey(7)
    out = np.asarray(augment.random_flip(key, jnp.asarray(images)))
    mask = np.asarray(augment._sample_flip_mask(key, 64))
    assert 0 < mask.sum() < 64
    for i in range(64):
        expected = images[i, :, ::-1] if mask[i] else images[i]
        np.testing.assert_array_equal(out[i], expected)
    assert out.dtype == np.uint8


def test_random_crop_flip_composes_with_split_keys():
    images = _images(dtype=np.float32)
    key = jax.random.PRNGKey(11)
    out = np.asarray(augment.random_crop_flip(key, jnp.asarray(images), pad=1))
    crop_key, flip_key = jax.random.split(key)
    offsets = np.asarray(augment._sample_crop_offsets(crop_key, images.shape[0], 1))
    mask = np.asarray(augment._sample_flip_mask(flip_key, images.shape[0]))
    cropped = _np_crop(images, offsets, 1)
    expected = np.where(mask[:, None, None, None], cropped[:, :, ::-1], cropped)
    np.testing.assert_array_equal(out, expected)


def test_jit_matches_eager():
    images = jnp.asarray(_images())
    key = jax.random.PRNGKey(5)
    fn = jax.jit(functools.partial(augment.random_crop_flip, pad=4))
    np.testing.assert_array_equal(
        np.asarray(fn(key, images)), np.asarray(augment.random_crop_flip(key, images, pad=4))
    )
    norm = jax.jit(augment.normalize)
    out = norm(images, jnp.full((3,), 0.5), jnp.full((3,), 0.25))
    assert out.dtype == jnp.float32 and out.shape == images.shape


@pytest.mark.parametrize("pad", [-1, 1.5, True])
def test_bad_pad_rejected(pad):
    with pytest.raises(ValueError, match="pad must be a Python int >= 0"):
        augment.random_crop(jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 1)), pad=pad)


def test_non_batch_rejected():
    with pytest.raises(ValueError, match=r"images must be \[N, H, W, C\]"):
        augment.random_flip(jax.random.PRNGKey(0), jnp.zeros((4, 4, 1)))
