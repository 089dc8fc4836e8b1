"""Public data API of sfw_jax (re-exported from ``sfw_jax.datasets``).

``load_dataset(name, *, data_dir=None, val_fraction=0.1, seed=0, image_size=None) -> Dataset``
returns uint8 ``[N, H, W, C]`` images and int32 ``[N]`` labels for train / val / test plus a
``DatasetInfo``; ``iterate_batches`` / ``num_batches`` batch a ``Split`` on the host.
"""

from sfw_jax.datasets import *  # noqa: F401,F403  (the public names, listed once there)
from sfw_jax.datasets import __all__  # noqa: F401
