"""Constraint sizes equal a NumPy transliteration of the reference's constraint builders.

The reference (Lu et al. 2022, frankwolfe/pytorch/constraints.py) builds a table
``init_norms[param.shape] = avg_norm`` walking ``model.modules()`` in definition order, for the
'weight' then 'bias' of every module that has ``reset_parameters`` (a 0 average becomes 1.0), and
then gives every parameter ``D = 2 * value * init_norms[param.shape]``; K-sparse radius
``D / (2 sqrt(K))`` with ``K = min(max(int(K), int(K_frac * n)), n)``; L_p radius from
``convert_lp_radius(D / 2, n, 2, p)``. Below, each model's modules are listed in the reference
model's order with the Flax path of each parameter and PyTorch's shape for it.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sfw_jax
from sfw_jax.training.models import get_model


def _torch_shape(shape):
    """PyTorch layout of a Flax parameter: conv (kh, kw, in, out) -> (out, in, kh, kw),
    dense (in, out) -> (out, in)."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _conv(name, bias=False):
    return [name + ("kernel",)] + ([name + ("bias",)] if bias else [])


def _bn(name):
    return [name + ("scale",), name + ("bias",)]


def resnet18_modules():
    """Modules of the reference ResNet18 in ``model.modules()`` order (conv1, bn1, per block:
    conv1, bn1, conv2, bn2, shortcut conv, shortcut bn; classifier)."""
    mods = [_conv(("conv1",)), _bn(("bn1",))]
    for stage in range(1, 5):
        for block in range(2):
            b = f"layer{stage}_{block}"
            mods += [_conv((b, "conv1")), _bn((b, "bn1")), _conv((b, "conv2")), _bn((b, "bn2"))]
            if stage > 1 and block == 0:
                mods += [_conv((b, "shortcut_conv")), _bn((b, "shortcut_bn"))]
    mods.append(_conv(("linear",), bias=True))
    return mods


def vgg16_modules():
    """Reference VGG16: per conv layer Conv2d (with bias) then BatchNorm2d; classifier."""
    mods = []
    for i in range(13):
        mods += [_conv((f"conv{i}",), bias=True), _bn((f"bn{i}",))]
    mods.append(_conv(("classifier",), bias=True))
    return mods


def simple_cnn_modules(head):
    """SimpleCNN written as a PyTorch module in its definition order (conv_i, bn_i; fc1; fc2)."""
    mods = []
    for i in range(1, 5):
        mods += [_conv((f"conv{i}",)), _bn((f"bn{i}",))]
    if head == "dense":
        mods.append(_conv(("fc1",), bias=True))
    mods.append(_conv(("fc2",), bias=True))
    return mods


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def reference_sizes(params, per_module_norms, modules, kind, value, k=10, k_frac=0.05, p=2.0):
    """Transliteration of create_k_sparse_constraints / create_lp_constraints: returns
    {flax path: (diameter, radius)}."""
    init_norms = {}
    for module in modules:
        for path in module:                       # module's 'weight' then 'bias'
            avg = _get(per_module_norms, path)
            if avg == 0.0:
                avg = 1.0
            init_norms[_torch_shape(np.shape(_get(params, path)))] = avg
    out = {}
    for module in modules:
        for path in module:
            shape = np.shape(_get(params, path))
            n = int(np.prod(shape))
            d = 2.0 * value * init_norms[_torch_shape(shape)]
            if kind == "k_sparse":
                real_k = min(max(int(k), int(k_frac * n)), n)
                out[path] = (d, d / (2.0 * math.sqrt(real_k)))
            else:
                in_rec = 0.5
                out_rec = 0.5 if p == 1 else (0.0 if math.isinf(p) else 1.0 / p)
                out[path] = (d, d / 2.0 * n ** (out_rec - in_rec))
    return out


MODELS = {
    "resnet18": (lambda: get_model("resnet18", 10), resnet18_modules),
    "vgg16": (lambda: get_model("vgg16", 10), vgg16_modules),
    "simple_cnn": (lambda: get_model("simple_cnn", 10, width=0.5, use_bn=True),
                   lambda: simple_cnn_modules("dense")),
    "simple_cnn_gap": (lambda: get_model("simple_cnn", 10, width=1.0, use_bn=True, head="gap"),
                       lambda: simple_cnn_modules("gap")),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_norms(request):
    make, modules = MODELS[request.param]
    model = make()
    x = jnp.zeros((1, 32, 32, 3))
    init_fn = lambda key: model.init(key, x, train=False)["params"]       # noqa: E731
    params = jax.eval_shape(init_fn, jax.random.key(0))
    key = jax.random.key(1)
    per_leaf = sfw_jax.expected_init_norms(init_fn, key, 2, rule="per_leaf")
    reference = sfw_jax.expected_init_norms(init_fn, key, 2, rule="reference")
    return params, per_leaf, reference, modules()


@pytest.mark.parametrize("kind,p", [("k_sparse", None), ("l2", 2.0), ("l1", 1.0),
                                    ("linf", math.inf)])
def test_sizes_equal_the_reference_transliteration(model_norms, kind, p):
    params, per_leaf, reference, modules = model_norms
    listed = {path for module in modules for path in module}
    flat_paths = {tuple(k.key for k in path)
                  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert listed == flat_paths                  # every parameter listed once
    expected = reference_sizes(params, per_leaf, modules, kind, 15.0, p=p or 2.0)
    cons = sfw_jax.make_constraints(params, kind, k=10, k_frac=0.05, value=15.0,
                                    mode="initialization", init_norms=reference)
    for path, (d, r) in expected.items():
        c = _get(cons, path)
        assert c.diameter == pytest.approx(d, rel=1e-6), path
        assert c.radius == pytest.approx(r, rel=1e-6), path


def test_per_leaf_rule_differs_on_batchnorm_scale(model_norms):
    params, per_leaf, reference, _ = model_norms
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(k.key for k in path)
        if keys[-1] == "scale":
            c = np.shape(_get(params, keys))[0]
            assert _get(per_leaf, keys) == pytest.approx(math.sqrt(c), rel=1e-6)
            assert _get(reference, keys) == 1.0          # the BatchNorm bias's 0 -> 1.0


def test_last_module_of_a_shape_wins():
    # Two same-shaped leaves with different init scales: the later-defined one's norm wins
    # for both, whatever the names' sorted order.
    def init_fn(key):
        k1, k2 = jax.random.split(key)
        return {"z_first": 3.0 * jax.random.normal(k1, (4, 4)),
                "a_second": jax.random.normal(k2, (4, 4)), "b_other": jnp.zeros((3,))}
    norms = sfw_jax.expected_init_norms(init_fn, jax.random.key(0), 50, rule="reference")
    own = sfw_jax.expected_init_norms(init_fn, jax.random.key(0), 50, rule="per_leaf")
    assert norms["z_first"] == norms["a_second"] == own["a_second"]
    assert own["z_first"] == pytest.approx(3.0 * own["a_second"], rel=0.1)
    assert norms["b_other"] == own["b_other"] == 1.0


def test_rule_is_validated():
    with pytest.raises(ValueError, match="rule must be one of .*'per-leaf'"):
        sfw_jax.expected_init_norms(lambda k: {"w": jnp.ones(2)}, jax.random.key(0), 1,
                                    rule="per-leaf")
