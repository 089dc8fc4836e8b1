"""Study grids for ``python -m experiments.study --preset NAME`` (section 5 of Lu et al., 2022).

A :class:`StudyPreset` is one architecture + dataset: a base ``TrainConfig`` (a config preset of
``sfw_jax.training.presets.PRESETS`` plus overrides) and the methods trained on it, each a set of
``TrainConfig`` overrides:

* ``sfw_ksparse``: SFW with K-sparse polytope constraints (the paper's method);
* ``sfw_l2``: SFW with L2-ball constraints (the reference's other choice: same optimizer, no
  polytope; shows what the polytope itself buys);
* ``sgd``: unconstrained SGD with momentum and weight decay (the usual dense baseline);
* ``sfw_nm24``, ``sfw_nm14`` (the N:M preset): SFW with N:M polytope constraints (2:4, 1:4);
* ``sfw_init`` (optional, in ``optional_methods``): ``sfw_ksparse`` with ``sfw_init=True``
  (SFW-Init); run it with ``--methods ... sfw_init``.

Every method is trained dense, then pruned one-shot at every level of ``sparsities`` (scopes
``scopes``), and the methods in ``retrain_methods`` are also retrained under the mask at
``retrain_sparsities`` for ``retrain_epochs`` epochs (None: 10% of the training epochs). With
``nm_patterns``, every method is also pruned one-shot to those N:M patterns, and the methods in
``nm_retrain_methods`` are retrained under the masks of ``nm_retrain_patterns``.

Presets:

* ``digits-smoke``: a tiny grid on the embedded 8x8 digits for tests (well under a minute of
  compute per method on a CPU, compile time aside).
* ``cifar10-cpu``: SimpleCNN (width 0.5, BatchNorm) on the shared CIFAR-10 JPEG copy
  (``../shared/data/cifar10-jpeg.tar.gz`` relative to the repository root), sized for a 2-core
  CPU.
* ``cifar10-cpu-gap``: the same grid with SimpleCNN's global-average-pool head (width 1.0, 6
  epochs, SFW K-sparse k_frac 0.01 with the reference's init-norm rule), whose weights sit in
  the convolutions; its optional methods ``sfw_fast_gradient``, ``sfw_delay_lmo``,
  ``sfw_tighten_tau`` and ``sfw_tighten_k`` are that SFW K-sparse with one constraint variant
  each (rescale 'fast_gradient', ``delay_lmo``, ``tau_start``, ``k_frac_start``).
* ``cifar10-cpu-nm``: the cifar10-cpu-gap grid with SFW N:M 2:4 and 1:4 (``constraint=
  'nm_sparse'``) beside SFW K-sparse and SGD, every method also pruned one-shot to 2:4 and 1:4,
  SGD also retrained under a 2:4 mask.
* ``paper-resnet18-cifar10``: ResNet-18 with the reference's defaults (180 epochs), SGD baseline
  lr 0.1 momentum 0.9 decay 5e-4 step schedule, SGD retrained at 90, 95, 98% (for a GPU).
* ``text-cpu``: a byte-level Transformer language model (``transformer_lm``, width 128, 2
  blocks, context 128) on the shared CPython standard-library text
  (``../shared/data/text/cpython-3.11.7-lib.tar.gz``): ``adamw``, ``sfw`` (momentum SFW on the
  attention and MLP kernels) and ``adam_sfw`` (Adam-preconditioned SFW) at equal steps, each
  pruned one-shot (global magnitude) to 50 / 70 / 90 % and to 2:4, and ``adamw_wanda``: the
  ``adamw`` run pruned by Wanda (per output row, and 2:4). Metric: test bits per byte.

Methods of ``pruned_as`` are no training runs: a trained method's run pruned with another
criterion of :data:`experiments.prune_sweep.CRITERIA` (e.g. Wanda).

How each grid's hyperparameters were chosen, and what it found, is in
``results/<study>/README.md``; a preset's ``notes`` (copied into its ``table.md``) name the
settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from experiments.prune_sweep import MAGNITUDE, SPARSITIES as FULL_SPARSITIES
from sfw_jax.training.config import TrainConfig
from sfw_jax.training.presets import from_preset

CIFAR10_JPEG = "../shared/data/cifar10-jpeg.tar.gz"
"""The shared CIFAR-10 JPEG copy, relative to the repository root (read as an archive)."""


LABELS = {"sfw_ksparse": "SFW K-sparse", "sfw_l2": "SFW L2", "sgd": "SGD",
          "sfw_init": "SFW + init", "sfw_nm24": "SFW N:M 2:4", "sfw_nm14": "SFW N:M 1:4",
          "adamw": "AdamW", "sfw": "SFW (momentum)", "adam_sfw": "Adam-SFW",
          "adamw_wanda": "AdamW + Wanda", "adamw_row": "AdamW + row magnitude"}
"""Display names of the methods in tables and plots."""

STUDY_METRICS = ("test_acc", "test_bits_per_byte")
"""The headline metric of a study: test accuracy (image classification, higher is better) or
test bits per byte (language models, lower is better)."""


@dataclasses.dataclass(frozen=True)
class StudyPreset:
    """One study grid (see the module docstring).

    Attributes:
      name, description: identification.
      base_preset: a ``sfw_jax.training.presets.PRESETS`` name (or None) for the base config.
      base: ``TrainConfig`` overrides applied on top of ``base_preset``.
      methods: method name -> ``TrainConfig`` overrides (the default method list, in order).
      optional_methods: methods available via ``--methods`` but not run by default.
      labels: method name -> display name in tables and plots.
      sparsities: one-shot pruning levels (fractions).
      scopes: pruning scopes of the sweep (``'kernels'``, ``'all'``).
      main_scope: the scope of the main table and plot (and of retraining).
      bn_recal: also sweep the main scope with BatchNorm re-calibration (an extra beyond the
        paper).
      recal_batches: training batches for the re-calibration.
      retrain_methods: methods that are also pruned + retrained.
      retrain_sparsities: levels at which they are retrained.
      retrain_epochs: epochs of retraining (None: 10% of the method's training epochs).
      retrain_lr: peak lr of retraining (SGD momentum 0.9, cosine decay per step).
      nm_patterns: N:M patterns ('2:4', ...) of one-shot N:M pruning of every method (the
        kernels with N:M groups along their input features; ``experiments.prune_sweep``).
      nm_retrain_methods: methods also pruned to each of ``nm_retrain_patterns`` and retrained
        under the N:M mask (``retrain_epochs``, ``retrain_lr``).
      nm_retrain_patterns: the N:M patterns of that retraining.
      notes: free text copied into ``table.md`` (the settings, and where their choice is
        written up).
      pruned_as: method name -> (trained method, criterion): a method evaluated on the trained
        method's run (not trained again) with a pruning criterion of
        :data:`experiments.prune_sweep.CRITERIA` (e.g. ``("adamw", "wanda")``); run by default
        after ``methods``.
      metric: one of :data:`STUDY_METRICS`; ``test_bits_per_byte`` writes the language-model
        reports (:mod:`experiments.lm_report`).
    """

    name: str
    description: str
    base_preset: str | None
    base: Mapping[str, Any]
    methods: Mapping[str, Mapping[str, Any]]
    optional_methods: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(LABELS))
    sparsities: tuple[float, ...] = FULL_SPARSITIES
    scopes: tuple[str, ...] = ("kernels", "all")
    main_scope: str = "kernels"
    bn_recal: bool = False
    recal_batches: int = 20
    retrain_methods: tuple[str, ...] = ("sgd",)
    retrain_sparsities: tuple[float, ...] = (0.9, 0.95, 0.98)
    retrain_epochs: int | None = None
    retrain_lr: float = 0.01
    nm_patterns: tuple[str, ...] = ()
    nm_retrain_methods: tuple[str, ...] = ()
    nm_retrain_patterns: tuple[str, ...] = ()
    notes: str = ""
    pruned_as: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    metric: str = "test_acc"

    def all_methods(self) -> dict[str, Mapping[str, Any]]:
        """Default and optional trained methods together (name -> overrides)."""
        return {**self.methods, **self.optional_methods}

    def default_methods(self) -> list[str]:
        """The methods run by default: ``methods``, then ``pruned_as``."""
        return [*self.methods, *self.pruned_as]

    def trained_as(self, method: str) -> tuple[str, str]:
        """(the trained method whose run ``method`` uses, its pruning criterion)."""
        return tuple(self.pruned_as.get(method, (method, MAGNITUDE)))

    def label(self, method: str) -> str:
        """Display name of a method."""
        return self.labels.get(method, method)

    def base_config(self) -> TrainConfig:
        """The base ``TrainConfig`` (before a method's overrides)."""
        return from_preset(self.base_preset, **dict(self.base))

    def method_config(self, method: str, out_dir: str | None = None) -> TrainConfig:
        """The ``TrainConfig`` of ``method`` writing to ``out_dir``.

        Raises ValueError for an unknown method or an override that is not a ``TrainConfig``
        field, naming it.
        """
        methods = self.all_methods()
        method = self.trained_as(method)[0]
        if method not in methods:
            raise ValueError(f"method must be one of {sorted(methods)} for study preset "
                             f"{self.name!r}, got {method!r}")
        try:
            return self.base_config().replace(**dict(methods[method]), out_dir=out_dir)
        except ValueError as e:
            raise ValueError(f"method {method!r} of study preset {self.name!r}: {e}") from e


DIGITS_SMOKE = StudyPreset(
    name="digits-smoke",
    description="tiny grid on sklearn's 8x8 digits (tests and smoke runs)",
    base_preset=None,
    base=dict(arch="simple_cnn", model_kwargs={"width": 0.25, "use_bn": True},
              dataset="digits", val_fraction=0.1, augment=False, optimizer="sfw",
              constraint="k_sparse", k=10, k_frac=0.05, tau=15.0, mode="initialization",
              rescale="gradient", sfw_scope="all", init_norm_samples=2, lr=1.0,
              lr_schedule="constant", momentum=0.9, weight_decay=0.0, epochs=2, batch_size=64,
              keep_checkpoints=1, progress=False),
    methods={"sfw_ksparse": {},
             "sfw_l2": {"constraint": "l2"},
             "sgd": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4,
                     "lr_schedule": "constant"}},
    optional_methods={"sfw_init": {"sfw_init": True}},
    sparsities=(0.0, 0.5, 0.9, 0.95),
    bn_recal=True,
    recal_batches=4,
    retrain_sparsities=(0.9,),
    retrain_epochs=1,
)

CIFAR10_CPU_NOTES = """\
SimpleCNN width 0.5 (BatchNorm, ~0.15M parameters) on the shared CIFAR-10 JPEG copy (45k train /
5k val / 10k test), random crop + flip, batch 128, 8 epochs, cosine schedule. SFW K-sparse:
k_frac 0.02, tau 7 ('initialization' diameters), gradient rescaling, lr 1.0, momentum 0.9, every
tensor constrained, chosen on the validation split (best validation accuracy one-shot pruned at
90 %). SFW L2 and SFW + init: the reference's k_frac 0.05, tau 15. SGD: lr 0.05, momentum 0.9,
weight decay 5e-4. Retraining: SGD lr 0.01 (cosine), 1 epoch. BatchNorm re-calibration (an
extra beyond the paper): 20 training batches; the paper's numbers are the rows without it.
Tuning and findings: results/cifar10-cpu/README.md.
"""

CIFAR10_CPU = StudyPreset(
    name="cifar10-cpu",
    description="SimpleCNN (width 0.5, BN) on the shared CIFAR-10 JPEG copy, 2-core CPU scale",
    base_preset="cpu-simplecnn-cifar10",
    base=dict(data_dir=CIFAR10_JPEG, model_kwargs={"width": 0.5, "use_bn": True},
              epochs=8, lr_schedule="cosine", init_norm_samples=20, init_norm_rule="per_leaf",
              keep_checkpoints=2, val_fraction=0.1, augment=True),
    # SFW K-sparse: k_frac and tau chosen on the validation split (see CIFAR10_CPU_NOTES).
    methods={"sfw_ksparse": {"k_frac": 0.02, "tau": 7.0},
             "sfw_l2": {"constraint": "l2"},
             "sgd": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4,
                     "lr_schedule": "cosine"}},
    # SFW-Init with the reference's k_frac 0.05, tau 15, and 100 Adam steps (the reference's
    # 390 cost as much as 2-3 training epochs at this scale)
    optional_methods={"sfw_init": {"sfw_init": True, "sfw_init_steps": 100}},
    bn_recal=True,
    recal_batches=20,
    retrain_epochs=1,
    notes=CIFAR10_CPU_NOTES,
)

CIFAR10_CPU_GAP_NOTES = """\
The cifar10-cpu grid on an all-convolutional head: SimpleCNN width 1.0 with head 'gap'
(BatchNorm, global average pooling, one linear layer; ~66k parameters, 99% of them in the
convolutions), 6 epochs. SFW K-sparse: k_frac 0.01, tau 7 and the reference's shape-keyed
initial norms (init_norm_rule 'reference'), chosen on the validation split by cifar10-cpu's
rule. Everything else as cifar10-cpu. Tuning and findings:
results/cifar10-cpu-gap/README.md.
"""

_GAP_SFW_KSPARSE = {"k_frac": 0.01, "tau": 7.0, "init_norm_rule": "reference"}

CIFAR10_CPU_GAP = dataclasses.replace(
    CIFAR10_CPU,
    name="cifar10-cpu-gap",
    description="SimpleCNN (width 1.0, BN, global-average-pool head) on the shared CIFAR-10 JPEG "
                "copy, 2-core CPU scale",
    base={**CIFAR10_CPU.base, "model_kwargs": {"width": 1.0, "use_bn": True, "head": "gap"},
          "epochs": 6},
    methods={**CIFAR10_CPU.methods, "sfw_ksparse": _GAP_SFW_KSPARSE},
    # The constraint variants of sfw_jax.scheduled_sfw and rescale 'fast_gradient',
    # each on top of sfw_ksparse (results/cifar10-cpu-gap/tuning-variants.md).
    optional_methods={**CIFAR10_CPU.optional_methods,
                      "sfw_fast_gradient": {**_GAP_SFW_KSPARSE, "rescale": "fast_gradient"},
                      "sfw_delay_lmo": {**_GAP_SFW_KSPARSE, "delay_lmo": 1 / 3},
                      "sfw_tighten_tau": {**_GAP_SFW_KSPARSE, "tau_start": 15.0},
                      "sfw_tighten_k": {**_GAP_SFW_KSPARSE, "k_frac_start": 0.05}},
    notes=CIFAR10_CPU_GAP_NOTES,
)

CIFAR10_CPU_NM_NOTES = """\
N:M structured sparsity on the cifar10-cpu-gap grid (same data, model, 6 epochs, SFW K-sparse and
SGD settings). Every method is also pruned one-shot to 2:4 and 1:4 (in every group of 4
consecutive input channels of each kernel the 2 (1) of largest |w| kept; conv1, with 3 input
channels, stays dense); SGD is also pruned to 2:4 and retrained 1 epoch under the mask. SFW N:M
2:4 / 1:4: every kernel with N:M groups constrained to the N:M polytope ('initialization'
diameters, tau 7, the K-sparse method's value, to be tuned on the validation split), the other
tensors trained by SGD at rest_lr 0.05. Findings: results/cifar10-cpu-nm/README.md.
"""

CIFAR10_CPU_NM = dataclasses.replace(
    CIFAR10_CPU_GAP,
    name="cifar10-cpu-nm",
    description="N:M (2:4, 1:4) one-shot pruning on the cifar10-cpu-gap grid (SimpleCNN GAP head, "
                "shared CIFAR-10 JPEG copy, 2-core CPU scale)",
    methods={"sfw_nm24": {"constraint": "nm_sparse", "nm": "2:4", "tau": 7.0, "rest_lr": 0.05},
             "sfw_nm14": {"constraint": "nm_sparse", "nm": "1:4", "tau": 7.0, "rest_lr": 0.05},
             "sfw_ksparse": CIFAR10_CPU_GAP.methods["sfw_ksparse"],
             "sgd": CIFAR10_CPU_GAP.methods["sgd"]},
    optional_methods={"sfw_l2": CIFAR10_CPU_GAP.methods["sfw_l2"],
                      **CIFAR10_CPU_GAP.optional_methods},
    nm_patterns=("2:4", "1:4"),
    nm_retrain_methods=("sgd",),
    nm_retrain_patterns=("2:4",),
    notes=CIFAR10_CPU_NM_NOTES,
)

PAPER_RESNET18_CIFAR10 = StudyPreset(
    name="paper-resnet18-cifar10",
    description="ResNet-18 on CIFAR-10 with the reference's defaults (180 epochs; for a GPU)",
    base_preset="paper-resnet18-cifar10",
    base=dict(data_dir=CIFAR10_JPEG, val_fraction=0.1, keep_checkpoints=2),
    methods={"sfw_ksparse": {},
             "sfw_l2": {"constraint": "l2"},
             "sgd": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                     "lr_schedule": "step"}},
    optional_methods={"sfw_init": {"sfw_init": True, "sfw_init_steps": 100}},
    bn_recal=True,
    recal_batches=50,
    retrain_methods=("sgd", "sfw_ksparse"),
    notes="Reference setting (Lu et al., ICLR 2022, section 5). A 10% validation split is "
          "held out (the reference trains on all 50k) so hyperparameters are chosen on it.",
)

TEXT_CORPUS = "../shared/data/text/cpython-3.11.7-lib.tar.gz"
"""The shared CPython standard-library text, relative to the repository root."""

TEXT_CPU_NOTES = """\
transformer_lm width 128, 2 blocks, 4 heads, context 128 (~0.45M parameters, 0.39M of them in
the attention and MLP kernels) on the shared CPython 3.11.7 standard library, split by file
(80 / 10 / 10 % of the files by name hash); every method trains 3 epochs of 400 steps (batch
32 windows of 129 bytes, a fixed subset of 12,800 training windows), cosine schedule per epoch.
Constraints (sfw, adam_sfw): K-sparse polytopes on the attention and MLP kernels only
('initialization' diameters, per-tensor E||W_init||); embeddings, LayerNorms and biases by
SGD (sfw) or AdamW (adam_sfw). Pruning: the attention and MLP kernels, global magnitude (or
Wanda per output row with 8 calibration batches of the training split), 2:4 along the input
dimension; embeddings (tied head) stay dense. Hyperparameters chosen on the validation split:
results/text-cpu/tuning.md; findings: results/text-cpu/README.md.
"""

TEXT_CPU = StudyPreset(
    name="text-cpu",
    description="byte-level Transformer LM (width 128, 2 blocks, context 128) on the CPython "
                "standard library, 2-core CPU scale",
    base_preset=None,
    base=dict(arch="transformer_lm",
              model_kwargs={"width": 128, "depth": 2, "heads": 4, "context": 128},
              dataset="text", data_dir=TEXT_CORPUS, val_fraction=0.1,
              max_train_samples=12800, epochs=3, batch_size=32, eval_batch_size=256,
              lr_schedule="cosine", constraint="k_sparse", k=1, k_frac=0.05, tau=15.0,
              mode="initialization", rescale="gradient", sfw_scope="kernels",
              init_norm_samples=10, init_norm_rule="per_leaf", cpu_kernel=False,
              keep_checkpoints=1, seed=0),
    methods={"adamw": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1},
             "sfw": {"optimizer": "sfw", "lr": 1.0, "momentum": 0.9, "rest_lr": 0.1,
                     "weight_decay": 0.0},
             "adam_sfw": {"optimizer": "adam_sfw", "lr": 3e-3, "rest_lr": 1e-3,
                          "weight_decay": 0.1}},
    optional_methods={},
    pruned_as={"adamw_wanda": ("adamw", "wanda")},
    sparsities=(0.0, 0.5, 0.7, 0.9),
    scopes=("kernels",),
    retrain_methods=(),
    retrain_sparsities=(),
    nm_patterns=("2:4",),
    metric="test_bits_per_byte",
    notes=TEXT_CPU_NOTES,
)

STUDY_PRESETS: dict[str, StudyPreset] = {
    p.name: p for p in (DIGITS_SMOKE, CIFAR10_CPU, CIFAR10_CPU_GAP, CIFAR10_CPU_NM,
                        PAPER_RESNET18_CIFAR10, TEXT_CPU)}


def study_preset_names() -> list[str]:
    """Sorted study preset names."""
    return sorted(STUDY_PRESETS)


def get_study_preset(name: str) -> StudyPreset:
    """The study preset ``name``; ValueError listing the names otherwise."""
    if name not in STUDY_PRESETS:
        raise ValueError(f"preset must be one of {study_preset_names()}, got {name!r}")
    return STUDY_PRESETS[name]
