"""Exceptions raised by the dataset loaders."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A local data file or folder does not have the expected layout or content.

    The message names the offending file, what was found and what was expected.
    """


class DatasetUnavailableError(RuntimeError):
    """A dataset cannot be obtained (TFDS missing, not prepared and not downloadable, ...)."""


LOCAL_FORMATS_HELP = (
    "Pass --data-dir (data_dir=...) pointing at a local copy in one of these layouts: "
    "'idx' (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz]); 'cifar-python' (cifar-10-batches-py: data_batch_1..5, test_batch, "
    "batches.meta; or cifar-100-python: train, test, meta); 'imagefolder' (train/<class>/*.png|jpg|jpeg, "
    "test/<class>/..., optional val/ or valid/; a .tar/.tar.gz of that tree also works); 'tiny-imagenet' "
    "(wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt); "
    "or use the offline dataset name 'digits'."
)
