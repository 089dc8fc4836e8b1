"""Dataset loading: TFDS, local files (IDX, CIFAR pickles, image folders, Tiny-ImageNet, text),
digits.

See ``load_dataset`` for how a source is chosen and ``iterate_batches`` for host batching.
"""

from sfw_jax.training.datasets._batching import epoch_permutation, iterate_batches, num_batches
from sfw_jax.training.datasets._errors import DataFormatError, DatasetUnavailableError
from sfw_jax.training.datasets._loader import load_dataset
from sfw_jax.training.datasets._text import TEXT_DATASETS, TokenSplit, inputs_targets
from sfw_jax.training.datasets._types import Dataset, DatasetInfo, Split

__all__ = [
    "DataFormatError",
    "Dataset",
    "DatasetInfo",
    "DatasetUnavailableError",
    "Split",
    "TEXT_DATASETS",
    "TokenSplit",
    "epoch_permutation",
    "inputs_targets",
    "iterate_batches",
    "load_dataset",
    "num_batches",
]
