"""The sizes of a device-suite run (:class:`Plan`, :data:`PLANS`) and of a device job
(:class:`JobPlan`, :data:`JOB_PLANS`), and their constants."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SECTIONS = ("env", "tests", "topk", "update", "train_step", "study")
REPORT_JSON = "device_report.json"
REPORT_MD = "device_report.md"
PLOT_FILE = "accuracy_vs_sparsity.png"
TESTS_LOG = "tests.log"
MAX_FILES = 8                      # what the device tool copies back from $OUT
MAX_FILE_BYTES = 16 * 2 ** 20
TESTS_LOG_CHARS = 2 * 2 ** 20

DEFAULT_DATA = "data/cifar10-jpeg.tar.gz"
SFW_PRESET = "paper-resnet18-cifar10"
SGD_PRESET = "paper-resnet18-cifar10-sgd"
STUDY_PRESET = "paper-resnet18-cifar10"    # experiments.study_presets: scopes, retrain lr
SPARSITY_PERCENTS = (0, 50, 70, 80, 90, 95, 98)
RETRAIN_PERCENTS = (90, 95)
RETRAIN_EPOCHS = 1
PROBE_EPOCHS = 4
"""Epochs of the run whose first epoch is timed. 4 shares epoch 1's lr with E in {2, ..., 5}
under the presets' milestone schedules (lr / 10 at E // 3 and 2E // 3), the E a short budget
gives, so those runs resume; at E >= 6 they retrain from scratch (one epoch more)."""
TOPK_MIN_N, TOPK_MAX_N = 36_864, 2_359_296
STEPS_PER_CALL_TIMED = (1, 8)      # train_step: the loop's step at these steps per jitted call
OVERRUN_FRACTION = 0.125           # post-training study steps still start this long (times the
                                   # budget) after the deadline: 60 s of a 480 s budget, whose
                                   # command limit is 600 s
COMPILE_EVENT_PREFIX = "/jax/core/compile/"
CACHE_EVENTS = ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one suite run.

    tests: pytest arguments (files, ``-k``) of the ``tests`` section; tests_timeout_s: its
      subprocess timeout (at most the section's share).
    topk_sizes: tensor sizes of ``topk`` (None: the ResNet-18 leaf sizes in [36864, 2359296]);
      topk_dtypes, topk_reps: dtypes and timed calls per measurement.
    update_tree: leaf shapes of the ``update`` tree (None: ResNet-18's params); update_reps:
      timed calls; op_count_methods: methods passed to ``op_counts`` (None: all; empty: not
      called).
    train_model, train_model_kwargs, train_batch, train_reps, train_precisions: ``train_step``.
    study_overrides: ``TrainConfig`` fields set on top of the presets (model and data size);
      study_test_subset: evaluate on a seeded random subset of this many test images (None:
      all); study_max_epochs: cap on E (None: the presets' epochs); synthetic_data: (train, test)
      images per class of the synthetic archive used when ``--data`` is absent (None: absent
      data is an error).
    budget_s: default ``--budget-s``; shares: seconds of each timing section at that budget
      (scaled with ``--budget-s``).
    """

    name: str
    tests: tuple[str, ...]
    tests_timeout_s: float
    topk_sizes: tuple[int, ...] | None
    topk_dtypes: tuple[str, ...]
    topk_reps: int
    update_tree: Mapping[str, Any] | None
    update_reps: int
    op_count_methods: tuple[str, ...] | None
    train_model: str
    train_model_kwargs: Mapping[str, Any]
    train_batch: int
    train_reps: int
    train_precisions: tuple[str, ...]
    study_overrides: Mapping[str, Any]
    study_test_subset: int | None
    study_max_epochs: int | None
    synthetic_data: tuple[int, int] | None
    budget_s: float
    shares: Mapping[str, float]


# The accelerator subset (37 tests, ~20 s on the 2-core CPU): the counting top-k paths on large
# arrays with ties / zeros / constants, signed zeros and subnormals, the K-sparse LMO in every
# dtype, the SFW step against its NumPy reference, bfloat16 params, pruning masks. Hypothesis
# tests that compile a new shape per example are left out (a compilation costs more on XLA:GPU
# than on XLA:CPU), as is the native CPU kernel.
ACCELERATOR_TESTS = (
    "tests/test_topk.py", "tests/test_lmo.py", "tests/test_sfw.py", "tests/test_pruning.py",
    "-k", "test_large_arrays_every_counting_path or test_signed_zero_and_subnormals or "
          "test_k_sparse_lmo_zero_gradient_is_vertex or test_k_sparse_lmo_dtypes_and_jit or "
          "(test_matches_numpy_reference_step and k_sparse) or test_bfloat16_params or "
          "test_counts_exact_and_ordered_at_many_sparsities or "
          "test_keep_masked_keeps_pruned_weights_zero")
CI_TESTS = ("tests/test_topk.py", "-k", "test_counts_pass_exact or test_auto_resolution_per_backend")

# A few-leaf tree for the rehearsal: a conv kernel of 36,864 entries (which 'auto' sends down
# its counting path), a dense kernel, their biases.
SMALL_TREE = {"conv": {"kernel": (3, 3, 64, 64), "bias": (64,)},
              "fc": {"kernel": (1024, 10), "bias": (10,)}}

PLANS: dict[str, Plan] = {
    "full": Plan(
        name="full", tests=ACCELERATOR_TESTS, tests_timeout_s=90.0,
        topk_sizes=None, topk_dtypes=("float32", "bfloat16"), topk_reps=15,
        update_tree=None, update_reps=30, op_count_methods=None,
        train_model="resnet18", train_model_kwargs={}, train_batch=128, train_reps=20,
        train_precisions=("fp32", "bf16"),
        study_overrides={}, study_test_subset=None, study_max_epochs=None,
        synthetic_data=None,
        budget_s=480.0,
        shares={"env": 10.0, "tests": 90.0, "topk": 45.0, "update": 75.0, "train_step": 70.0}),
    "rehearse": Plan(
        name="rehearse", tests=ACCELERATOR_TESTS, tests_timeout_s=120.0,
        topk_sizes=(36_864,), topk_dtypes=("float32", "bfloat16"), topk_reps=3,
        update_tree=SMALL_TREE, update_reps=5, op_count_methods=("sort",),
        train_model="mlp", train_model_kwargs={"hidden": (64,)},
        train_batch=32, train_reps=3, train_precisions=("fp32", "bf16"),
        study_overrides={"arch": "simple_cnn", "model_kwargs": {"width": 0.25, "use_bn": True},
                         "max_train_samples": 2560, "batch_size": 64, "init_norm_samples": 4},
        study_test_subset=1000, study_max_epochs=3, synthetic_data=(100, 20),
        budget_s=240.0,
        shares={"env": 10.0, "tests": 120.0, "topk": 30.0, "update": 40.0, "train_step": 40.0}),
    "ci": Plan(
        name="ci", tests=CI_TESTS, tests_timeout_s=60.0,
        topk_sizes=(2048,), topk_dtypes=("float32", "bfloat16"), topk_reps=2,
        update_tree={"w": (64, 32), "b": (32,)}, update_reps=2, op_count_methods=(),
        train_model="mlp", train_model_kwargs={"hidden": (16,)}, train_batch=8, train_reps=2,
        train_precisions=("fp32", "bf16"),
        study_overrides={"arch": "mlp", "model_kwargs": {"hidden": [16]}, "batch_size": 16,
                         "init_norm_samples": 2, "eval_batch_size": 100},
        study_test_subset=None, study_max_epochs=2, synthetic_data=(8, 4),
        budget_s=600.0,
        shares={"env": 10.0, "tests": 60.0, "topk": 120.0, "update": 120.0,
                "train_step": 120.0}),
}


# -- benchmarks.device_job: one paper-scale job per slot ----------------------------------------

JOB_BUDGET_S = 570.0
"""Seconds of work of a full job: a 600 s device command less the interpreter's start-up."""


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """Sizes of one ``benchmarks.device_job`` run.

    overrides: ``TrainConfig`` fields set on top of the job's config (model width, data size);
    epochs: the rehearsal's epochs (None: the preset's, never shortened); test_subset: evaluate
    on a seeded random subset of this many test images (None: all); synthetic_data: (train,
    test) images per class of the synthetic archive used when ``--data`` is absent (None:
    absent data is an error); budget_s: default ``--budget-s``; retrain_min_epochs,
    retrain_max_epochs: bounds of the retraining epochs per level (None: the job table's
    minimum, ``experiments.paper_jobs.RETRAIN_MIN_EPOCHS``, and 10 % of the training epochs,
    ``experiments.retrain.default_epochs``); recal_batches: BatchNorm re-calibration
    batches (None: the study preset's).
    """

    name: str
    overrides: Mapping[str, Any]
    epochs: int | None
    test_subset: int | None
    synthetic_data: tuple[int, int] | None
    budget_s: float
    retrain_min_epochs: int | None
    retrain_max_epochs: int | None
    recal_batches: int | None


JOB_PLANS: dict[str, JobPlan] = {
    "full": JobPlan(name="full", overrides={}, epochs=None, test_subset=None,
                    synthetic_data=None, budget_s=JOB_BUDGET_S, retrain_min_epochs=None,
                    retrain_max_epochs=None, recal_batches=None),
    # the job's own architecture at 1/16 width (4 to 32 channels: N:M 2:4 groups everywhere
    # but the first conv), 640 training images, 3 epochs
    "rehearse": JobPlan(
        name="rehearse",
        overrides={"model_kwargs": {"width": 0.0625}, "max_train_samples": 640,
                   "batch_size": 64, "init_norm_samples": 4, "eval_batch_size": 250},
        epochs=3, test_subset=500, synthetic_data=(100, 20), budget_s=600.0,
        retrain_min_epochs=1, retrain_max_epochs=2, recal_batches=4),
    # a narrow CNN with BatchNorm on 80 synthetic images, 2 epochs (tests/test_device_job.py)
    "ci": JobPlan(
        name="ci",
        overrides={"arch": "simple_cnn", "model_kwargs": {"width": 0.25, "use_bn": True},
                   "batch_size": 16, "init_norm_samples": 2, "eval_batch_size": 100},
        epochs=2, test_subset=None, synthetic_data=(8, 4), budget_s=600.0,
        retrain_min_epochs=1, retrain_max_epochs=1, recal_batches=2),
}
