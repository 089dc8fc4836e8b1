"""The optimizer options of a run: SFW's constraint sets and steps, SGD, learning rates.

With ``optimizer='sfw'`` every tensor (``sfw_scope='all'``, the reference) or every conv/dense
kernel (``'kernels'``) is constrained to a ``constraint`` set with per-tensor
K = min(max(k, floor(k_frac n)), n) and, in ``mode='initialization'``, L2 diameter
D = 2 tau E||W_init||_2 (the expectation over ``init_norm_samples`` fresh initialisations);
the other leaves are trained by SGD at ``rest_lr``. ``constraint='nm_sparse'`` with
``nm='N:M'`` constrains the kernels with N:M groups along their input-feature axis to the N:M
polytope (K = N n / M) and trains every other leaf with that SGD.

``optimizer='adamw'`` and ``'adam_sfw'`` (language models; :mod:`sfw_jax.training.optimizers`):
AdamW (decay on the leaves of rank >= 2), and Adam-preconditioned SFW on the constrained leaves
with AdamW at ``rest_lr`` on the others (``sfw_scope='kernels'`` routes embeddings, norms and
biases there). ``'adam_sfw'`` reads the SFW options as ``'sfw'`` does (no ``momentum``: Adam's
moments are its direction; no constraint schedule).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from sfw_jax import INIT_NORM_RULES, KINDS, LEAF_SCOPES, MODES, RESCALES
from sfw_jax.fw import parse_nm
from sfw_jax.training.config._option import bad, check_options, option
from sfw_jax.training.optimizers import OPTIMIZERS, SFW_OPTIMIZERS


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """What :func:`sfw_jax.training.optimizers.build_optimizer` builds (the module docstring
    has the sets). ``lr``, ``rest_lr`` and ``weight_decay`` None take the optimizer's default
    (:data:`sfw_jax.training.optimizers.OPTIMIZER_DEFAULTS`)."""

    GROUP: ClassVar[str] = "SFW / optimizer"

    optimizer: str = option("sfw", choices=OPTIMIZERS,
                            help="SFW, SGD, AdamW or Adam-preconditioned SFW (adam_sfw)")
    constraint: str = option("k_sparse", choices=KINDS, sfw_only=True,
                             help="constraint set of each tensor: a registered kind "
                                  "(sfw_jax.KINDS)")
    k: int = option(10, lo=1, sfw_only=True,
                    help="K = min(max(k, floor(k_frac n)), n) per tensor")
    k_frac: float = option(0.05, lo=0.0, hi=1.0, sfw_only=True, help="see k")
    nm: str | None = option(None, metavar="N:M", sfw_only=True,
                            help="pattern of constraint nm_sparse, e.g. 2:4 (N nonzeros in "
                                 "every M consecutive input features of each kernel)")
    lp_order: float = option(2.0, lo=1.0, metavar="P", sfw_only=True,
                             help="order p of constraint lp, the ball {||x||_p <= r} (p = 1, 2 "
                                  "and inf are l1, l2 and linf)")
    tau: float = option(15.0, lo=0.0, lo_open=True, sfw_only=True,
                        help="constraint size: diameter factor ('initialization'), radius or "
                             "diameter")
    mode: str = option("initialization", choices=MODES, sfw_only=True,
                       help="how tau sizes the sets (sfw_jax.make_constraints)")
    rescale: str = option("gradient", choices=RESCALES, sfw_only=True,
                          help="SFW step factor: ||m||/||x - v|| ('gradient'), ||m||/(D/2) "
                               "('fast_gradient'), 1/D ('diameter') or 1 ('none')")
    sfw_scope: str = option("all", choices=LEAF_SCOPES, sfw_only=True,
                            help="'all' tensors (reference) or 'kernels' only with SGD on the "
                                 "rest")
    init_norm_samples: int = option(100, lo=1, sfw_only=True,
                                    help="initialisations averaged for E||W_init||")
    init_norm_rule: str = option("reference", choices=INIT_NORM_RULES, sfw_only=True,
                                 help="E||W_init|| by tensor shape as the reference "
                                      "('reference') or per tensor (sfw_jax.expected_init_norms)")
    sfw_init: bool = option(False, sfw_only=True,
                            help="SFW-Init: learn per-tensor init scales before training "
                                 "(sfw_jax.training.sfw_init)")
    sfw_init_steps: int = option(390, lo=1, sfw_only=True,
                                 help="SFW-Init Adam steps")
    sfw_init_lr: float = option(1e-3, lo=0.0, lo_open=True, sfw_only=True,
                                help="SFW-Init Adam learning rate")
    cpu_kernel: bool | None = option(
        None, values={"auto": None, "on": True, "off": False}, sfw_only=True,
        resume_may_differ=True,
        help="SFW's native CPU kernel for the float32 K-sparse leaves (sfw_jax.fw.native; the "
             "same step, norms summed in another order): 'auto' = where it builds on a CPU "
             "backend, 'on' (an error where it cannot be built) or 'off' (the XLA path; "
             "presets that must reproduce bitwise pin it)")
    lr: float | None = option(None, lo=0.0, lo_open=True,
                              help="base learning rate (SFW, Adam-SFW: step-size factor); None: "
                                   "the optimizer's default (SFW 1.0, SGD 0.1, AdamW 1e-3, "
                                   "Adam-SFW 0.01)")
    rest_lr: float | None = option(None, lo=0.0, sfw_only=True,
                                   help="learning rate of the leaves SFW does not constrain: "
                                        "SGD (sfw, default 0.1) or AdamW (adam_sfw, default "
                                        "1e-3)")
    momentum: float = option(0.9, lo=0.0, hi=1.0, hi_open=True,
                             help="SFW momentum (m = mu m + (1 - mu) g) or SGD heavy-ball "
                                  "momentum (unused by adamw and adam_sfw: Adam's b1 = 0.9, "
                                  "b2 = 0.999)")
    weight_decay: float | None = option(None, lo=0.0,
                                        help="L2 decay added to the gradient of SGD-trained "
                                             "leaves, or AdamW's decoupled decay of its leaves "
                                             "of rank >= 2; None: the optimizer's default (SFW "
                                             "0, SGD 5e-4, AdamW 0.1, Adam-SFW 0)")

    def validate(self) -> None:
        """ValueError naming the first invalid field or conflict."""
        check_options(self)
        if self.nm is not None:
            parse_nm(self.nm)
        if self.constraint == "nm_sparse" and self.nm is None:
            raise bad("nm", None, "an N:M pattern such as '2:4' with constraint='nm_sparse'")
        if self.constraint != "nm_sparse" and self.nm is not None:
            raise bad("nm", self.nm, f"None with constraint={self.constraint!r} (the pattern "
                      f"belongs to constraint='nm_sparse')")
        if self.sfw_init and self.optimizer != "sfw":
            raise bad("sfw_init", self.sfw_init, f"False with optimizer={self.optimizer!r} "
                      f"(SFW-Init tunes the init for SFW)")
        # with 'nm_sparse' the leaves without N:M groups are SGD-trained: decay applies to them
        if (self.optimizer in SFW_OPTIMIZERS and self.sfw_scope == "all" and self.weight_decay
                and self.constraint not in ("unconstrained", "nm_sparse")):
            raise ValueError(
                f"weight_decay={self.weight_decay!r} conflicts with optimizer="
                f"{self.optimizer!r} and sfw_scope='all': SFW has no weight decay (the "
                f"constraint regularises); use weight_decay=0, or sfw_scope='kernels' to decay "
                f"the leaves trained otherwise")
