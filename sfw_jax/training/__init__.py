"""Training: the config and its presets, models, datasets, optimizers, the train loop, its run
folder and the ``sfw-train`` command line.

The API is the modules below, each a namespace whose ``__all__`` lists its public names (every
other name in them is private); ``datasets``, ``models`` and ``config`` are packages that export
their API themselves:

* :mod:`~sfw_jax.training.config`: ``TrainConfig`` (every option, by concern, validated);
  :mod:`~sfw_jax.training.presets`: named configs;
* :mod:`~sfw_jax.training.models`, :mod:`~sfw_jax.training.datasets`,
  :mod:`~sfw_jax.training.augment`: what is trained, on what;
* :mod:`~sfw_jax.training.optimizers`: SFW / SGD from a config;
  :mod:`~sfw_jax.training.schedules`: per-epoch learning rates;
  :mod:`~sfw_jax.training.sfw_init`: SFW-Init;
* :mod:`~sfw_jax.training.steps`: the jitted train / eval steps;
  :mod:`~sfw_jax.training.loop`: ``train``;
  :mod:`~sfw_jax.training.run_folder`: the files a run writes and reads back;
  :mod:`~sfw_jax.training.checkpoint`, :mod:`~sfw_jax.training.distributed`;
* :mod:`~sfw_jax.training.cli`: ``sfw-train`` (``python -m sfw_jax.training.cli``).
"""

__all__ = [
    "augment", "checkpoint", "cli", "config", "datasets", "distributed", "loop", "models",
    "optimizers", "presets", "run_folder", "schedules", "sfw_init", "steps",
]
