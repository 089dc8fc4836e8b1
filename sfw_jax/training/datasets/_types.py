"""Containers for loaded datasets: ``Split``, ``DatasetInfo`` and ``Dataset``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Split:
    """One split of an image-classification dataset, held in host memory.

    Attributes:
      images: ``uint8`` array ``[N, H, W, C]`` with raw pixel values 0..255.
      labels: ``int32`` array ``[N]`` with class ids in ``0..num_classes-1``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                "Split.images must be a uint8 numpy array [N, H, W, C]; got "
                f"{type(images).__name__} dtype={getattr(images, 'dtype', None)} "
                f"shape={getattr(images, 'shape', None)}"
            )
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int32 or labels.ndim != 1:
            raise ValueError(
                "Split.labels must be an int32 numpy array [N]; got "
                f"{type(labels).__name__} dtype={getattr(labels, 'dtype', None)} "
                f"shape={getattr(labels, 'shape', None)}"
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"Split has {images.shape[0]} images but {labels.shape[0]} labels; "
                "expected one label per image"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def take(self, indices: np.ndarray) -> "Split":
        """New split with the examples at ``indices`` (int array ``[M]``), in that order."""
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True, eq=False)
class DatasetInfo:
    """Metadata of a loaded dataset.

    Attributes:
      name: dataset name, e.g. ``'cifar10'``.
      num_classes: number of classes ``K``; labels lie in ``0..K-1``.
      image_shape: ``(H, W, C)``.
      mean: ``float32 [C]`` per-channel pixel mean in [0, 1] scale, computed on the train split
        after the validation carve-out.
      std: ``float32 [C]`` per-channel pixel standard deviation (same scale and split as ``mean``).
      class_names: ``K`` class names; ``class_names[k]`` names label ``k``.
      source: where the data came from, ``'<kind>:<location>'``, e.g. ``'tfds:cifar10'``,
        ``'imagefolder:/data/cifar10-jpeg'``, ``'sklearn:digits'``.
      sequence_length: None for images; for a language-model dataset (``'text'``, splits of
        :class:`~sfw_jax.training.datasets.TokenSplit`) the positions T per window (then
        ``num_classes`` is the vocabulary, ``image_shape`` is ``()`` and ``mean`` / ``std``
        are empty).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray
    class_names: tuple[str, ...]
    source: str
    sequence_length: int | None = None


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train / validation / test splits plus metadata. ``val`` may be empty (``[0, H, W, C]``)."""

    train: Split
    val: Split
    test: Split
    info: DatasetInfo


@dataclass(frozen=True, eq=False)
class RawDataset:
    """What a source reader returns before the validation carve-out and statistics.

    Attributes:
      train, test: the source's splits.
      val: the source's own validation split, or ``None`` when it has none.
      class_names: names of the classes, index = label.
      source: ``'<kind>:<location>'`` (see ``DatasetInfo.source``).
    """

    train: Split
    test: Split
    val: Split | None
    class_names: tuple[str, ...]
    source: str
