"""Tests for sfw_jax.training.models: parameter counts, shapes, BatchNorm, dtypes, PyTorch-like init.

Full-size models are only traced with ``jax.eval_shape``; forward/grad tests use tiny widths and
tiny inputs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfw_jax.training.models import (MLP, MODELS, VGG16, VGG16_CFG, ResNet18, SimpleCNN, get_model,
                            torch_bias_init)

# rbg keys: far cheaper to compile per parameter shape than threefry on a busy CPU.
KEY = jax.random.key(0, impl="rbg")


def _abstract_vars(model, shape=(1, 32, 32, 3)):
    return jax.eval_shape(model.init, KEY, jnp.zeros(shape, jnp.float32))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _paths(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in p): tuple(x.shape) for p, x in flat}


# ---------------------------------------------------------------- independent PyTorch formulas

def _torch_resnet18_count(num_classes: int) -> int:
    """kuangliu ResNet18 parameter count from the PyTorch layer list (BN weight+bias counted)."""
    def conv(cin, cout, k):  # nn.Conv2d(..., bias=False)
        return k * k * cin * cout

    def bn(c):
        return 2 * c

    total = conv(3, 64, 3) + bn(64)
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for s in (stride, 1):
            total += conv(in_planes, planes, 3) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            if s != 1 or in_planes != planes:
                total += conv(in_planes, planes, 1) + bn(planes)
            in_planes = planes
    return total + 512 * num_classes + num_classes


def _torch_vgg16_count(num_classes: int) -> int:
    """kuangliu VGG('VGG16') count: Conv2d(3x3, bias) + BatchNorm2d per int, Linear(512, C)."""
    total, cin = 0, 3
    for c in VGG16_CFG:
        if c == "M":
            continue
        total += 9 * cin * c + c + 2 * c
        cin = c
    return total + 512 * num_classes + num_classes


# ---------------------------------------------------------------- parameter counts (eval_shape)

@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnet18_param_count_matches_reference(num_classes):
    v = _abstract_vars(ResNet18(num_classes))
    assert _count(v["params"]) == _torch_resnet18_count(num_classes)
    # running mean+var: one pair per BN channel, as many as BN scale+bias.
    bn_params = sum(int(np.prod(s)) for p, s in _paths(v["params"]).items()
                    if "bn" in p.split("/")[-2])
    assert _count(v["batch_stats"]) == bn_params


def test_resnet18_param_count_literal():
    assert _torch_resnet18_count(10) == 11_173_962
    assert _count(_abstract_vars(ResNet18(10))["params"]) == 11_173_962
    assert _count(_abstract_vars(ResNet18(100))["params"]) == 11_220_132


@pytest.mark.parametrize("num_classes", [10, 100])
def test_vgg16_param_count_matches_reference(num_classes):
    v = _abstract_vars(VGG16(num_classes))
    assert _count(v["params"]) == _torch_vgg16_count(num_classes)
    assert _count(v["batch_stats"]) == 2 * sum(c for c in VGG16_CFG if c != "M")


def test_vgg16_param_count_literal():
    assert _torch_vgg16_count(10) == 14_728_266
    assert _count(_abstract_vars(VGG16(10))["params"]) == 14_728_266


def test_param_count_independent_of_input_size_for_global_pool_models():
    for model in (ResNet18(10), VGG16(10)):
        counts = {_count(_abstract_vars(model, s)["params"]) for s in [(1, 32, 32, 3), (2, 64, 48, 3)]}
        assert len(counts) == 1


def test_resnet18_layer_structure():
    p = _paths(_abstract_vars(ResNet18(10))["params"])
    assert p["conv1/kernel"] == (3, 3, 3, 64)
    assert "conv1/bias" not in p and "layer1_0/conv1/bias" not in p
    assert p["linear/kernel"] == (512, 10) and p["linear/bias"] == (10,)
    # 1x1 shortcut exactly where stride/channels change: first block of layers 2-4.
    shortcuts = sorted(k for k in p if "shortcut_conv" in k)
    assert shortcuts == [f"layer{i}_0/shortcut_conv/kernel" for i in (2, 3, 4)]
    assert p["layer3_0/shortcut_conv/kernel"] == (1, 1, 128, 256)
    assert p["layer4_1/conv2/kernel"] == (3, 3, 512, 512)
    assert sum(k.endswith("/kernel") and "conv" in k for k in p) == 20  # 17 3x3 + 3 1x1


def test_vgg16_layer_structure():
    p = _paths(_abstract_vars(VGG16(10))["params"])
    convs = [c for c in VGG16_CFG if c != "M"]
    assert sum(k.endswith("/kernel") and k.startswith("conv") for k in p) == 13
    cin = 3
    for i, c in enumerate(convs):
        assert p[f"conv{i}/kernel"] == (3, 3, cin, c) and p[f"conv{i}/bias"] == (c,)
        assert p[f"bn{i}/scale"] == (c,)
        cin = c
    assert p["classifier/kernel"] == (512, 10)


# ---------------------------------------------------------------- shapes for many inputs (traced)

@pytest.mark.parametrize("name,kw", [("simple_cnn", {}), ("simple_cnn", {"use_bn": True}),
                                     ("mlp", {}), ("resnet18", {}), ("vgg16", {})])
@pytest.mark.parametrize("shape,num_classes", [((2, 8, 8, 1), 10), ((3, 28, 28, 1), 7),
                                               ((2, 32, 32, 3), 100), ((1, 5, 7, 2), 1)])
def test_output_shape_full_size_models(name, kw, shape, num_classes):
    model = get_model(name, num_classes, **kw)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    v = jax.eval_shape(model.init, KEY, x)
    y = jax.eval_shape(model.apply, v, x)
    assert (y.shape, y.dtype) == ((shape[0], num_classes), jnp.float32)
    if "batch_stats" in v:
        y, st = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
                               v, x)
        assert y.shape == (shape[0], num_classes)
        assert jax.tree.map(lambda a: a.shape, st) == {
            "batch_stats": jax.tree.map(lambda a: a.shape, v["batch_stats"])}


# ---------------------------------------------------------------- forward passes (tiny models)

TINY = {
    "simple_cnn": dict(width=0.25),
    "simple_cnn_bn": dict(width=0.25, use_bn=True),
    "mlp": dict(hidden=(16, 8)),
    "resnet18": dict(width=1 / 8),
    "vgg16": dict(width=1 / 8),
}
X = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))  # the input shape all tiny tests share


def _tiny(name, num_classes=4, **kw):
    base = "simple_cnn" if name == "simple_cnn_bn" else name
    return get_model(base, num_classes, **{**TINY[name], **kw})


@pytest.fixture(scope="module")
def tiny():
    """``tiny(name) -> (model, variables)``, initialised once per module on ``X``."""
    cache = {}

    def get(name):
        if name not in cache:
            model = _tiny(name)
            cache[name] = (model, model.init(KEY, X))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(TINY))
def test_forward_values(tiny, name):
    model, v = tiny(name)
    y = model.apply(v, X)
    assert y.shape == (4, 4) and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    # Different images give different logits. With BN, use train mode: at init the eval-mode
    # signal of the 13-conv VGG shrinks ~6x per layer (PyTorch init, running var 1), to ~1e-9.
    if "batch_stats" in v:
        y, _ = model.apply(v, X, train=True, mutable=["batch_stats"])
    assert not np.allclose(y[0], y[1], rtol=1e-3, atol=1e-6)


def test_forward_on_other_sizes_and_classes():
    for shape, num_classes in [((2, 28, 28, 1), 7), ((1, 5, 7, 2), 100)]:
        x = jnp.ones(shape)
        for name in ("simple_cnn", "mlp"):
            model = _tiny(name, num_classes)
            y = model.apply(model.init(KEY, x), x)
            assert y.shape == (shape[0], num_classes) and bool(jnp.all(jnp.isfinite(y)))


def test_resnet_spatial_sizes_follow_pytorch_stride2_formula(tiny):
    model, v = tiny("resnet18")  # params do not depend on H, W (global average pool)
    x = jax.random.normal(KEY, (1, 7, 7, 3))
    _, st = model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
    inter = st["intermediates"]
    outs = [inter[f"layer{i}_1"]["__call__"][0] for i in (1, 2, 3, 4)]
    assert [o.shape[1:3] for o in outs] == [(7, 7), (4, 4), (2, 2), (1, 1)]  # floor((H-1)/2)+1
    assert [o.shape[-1] for o in outs] == [8, 16, 32, 64]


def test_resnet_stride2_conv_uses_symmetric_padding_like_pytorch(tiny):
    """layer2_0/conv1 == lax conv with padding (1, 1) on each side (not XLA 'SAME' (0, 1))."""
    model, v = tiny("resnet18")
    _, st = model.apply(v, X, capture_intermediates=True, mutable=["intermediates"])
    inter = st["intermediates"]
    block_in = inter["layer1_1"]["__call__"][0]
    got = inter["layer2_0"]["conv1"]["__call__"][0]
    kernel = v["params"]["layer2_0"]["conv1"]["kernel"]
    want = jax.lax.conv_general_dilated(block_in, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert got.shape == (4, 4, 4, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resnet_global_pool_and_linear_head(tiny):
    model, v = tiny("resnet18")
    y, st = model.apply(v, X, capture_intermediates=True, mutable=["intermediates"])
    feat = st["intermediates"]["layer4_1"]["__call__"][0]
    head = v["params"]["linear"]
    np.testing.assert_allclose(y, feat.mean(axis=(1, 2)) @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-6)


def test_mlp_flattens_any_trailing_shape():
    model = MLP(5, hidden=(6,))
    x = jax.random.normal(KEY, (4, 3, 2, 2))
    v = model.init(KEY, x)
    assert v["params"]["fc1"]["kernel"].shape == (12, 6)
    y = model.apply(v, x)
    y_flat = model.apply(v, x.reshape(4, 12))
    np.testing.assert_array_equal(y, y_flat)


def test_linear_mlp_with_no_hidden_layers_is_affine():
    model = MLP(3, hidden=())
    x = jax.random.normal(KEY, (4, 5))
    v = model.init(KEY, x)
    p = v["params"]["out"]
    np.testing.assert_allclose(model.apply(v, x), x @ p["kernel"] + p["bias"], rtol=1e-6)


# ---------------------------------------------------------------- BatchNorm behaviour

def test_batchnorm_running_stats_update_in_train_only(tiny):
    model, v = tiny("simple_cnn_bn")
    x = X * 2.0 + 1.0
    stats0 = v["batch_stats"]
    np.testing.assert_array_equal(stats0["bn1"]["mean"], 0.0)
    np.testing.assert_array_equal(stats0["bn1"]["var"], 1.0)

    _, st = model.apply(v, x, train=True, capture_intermediates=True,
                        mutable=["batch_stats", "intermediates"])
    conv1 = st["intermediates"]["conv1"]["__call__"][0]
    new = st["batch_stats"]["bn1"]
    # PyTorch momentum 0.1 == flax momentum 0.9: new = 0.9 * old + 0.1 * batch stat.
    np.testing.assert_allclose(new["mean"], 0.1 * conv1.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * conv1.var(axis=(0, 1, 2)), rtol=1e-4)
    for name in ("bn1", "bn2", "bn3", "bn4"):
        for leaf in ("mean", "var"):
            assert not np.allclose(st["batch_stats"][name][leaf], stats0[name][leaf])

    _, st_eval = model.apply(v, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, st_eval["batch_stats"], stats0)


def test_batchnorm_eval_uses_running_stats_train_uses_batch_stats(tiny):
    model, v = tiny("simple_cnn_bn")
    # Eval mode: every row depends on its own image only.
    y_eval = model.apply(v, X, train=False)
    y_eval_rev = model.apply(v, X[::-1], train=False)
    np.testing.assert_allclose(y_eval_rev[::-1], y_eval, rtol=1e-5, atol=1e-6)
    # Train mode: row 0 changes when the rest of the batch changes.
    y_train, _ = model.apply(v, X, train=True, mutable=["batch_stats"])
    other = X.at[1:].set(X[1:] * 3.0 + 1.0)
    y_train_other, _ = model.apply(v, other, train=True, mutable=["batch_stats"])
    assert not np.allclose(y_train_other[0], y_train[0], atol=1e-4)
    # train-mode BN output: per-channel zero mean, unit variance over the batch at init.
    _, st = model.apply(v, X, train=True, capture_intermediates=True,
                        mutable=["batch_stats", "intermediates"])
    bn1 = st["intermediates"]["bn1"]["__call__"][0]
    np.testing.assert_allclose(bn1.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(bn1.var(axis=(0, 1, 2)), 1.0, rtol=1e-2)


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_every_batchnorm_layer_updates_in_train_mode(tiny, name):
    model, v = tiny(name)
    _, st = model.apply(v, X, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), st["batch_stats"], v["batch_stats"])
    assert len(jax.tree.leaves(changed)) == {"resnet18": 2 * 20, "vgg16": 2 * 13}[name]
    assert all(jax.tree.leaves(changed))
    _, st_eval = model.apply(v, X, train=False, mutable=["batch_stats"])
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), st_eval["batch_stats"],
                        v["batch_stats"])
    assert all(jax.tree.leaves(same))


def test_simple_cnn_without_bn_has_conv_bias_and_no_batch_stats():
    v = _abstract_vars(SimpleCNN(10), (1, 8, 8, 1))
    assert "batch_stats" not in v
    assert v["params"]["conv1"]["bias"].shape == (32,)
    v_bn = _abstract_vars(SimpleCNN(10, use_bn=True), (1, 8, 8, 1))
    assert "bias" not in v_bn["params"]["conv1"] and v_bn["batch_stats"]["bn1"]["mean"].shape == (32,)


# ---------------------------------------------------------------- dtype

@pytest.mark.parametrize("name", list(TINY))
def test_bf16_compute_gives_bf16_logits_and_f32_params(tiny, name):
    model32, v = tiny(name)
    model16 = _tiny(name, dtype=jnp.bfloat16)
    v16 = jax.eval_shape(model16.init, KEY, X)
    assert jax.tree.structure(v16) == jax.tree.structure(v)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v16))
    y16 = model16.apply(v, X)
    assert y16.dtype == jnp.bfloat16
    if "batch_stats" in v:
        y16_train, st = model16.apply(v, X, train=True, mutable=["batch_stats"])
        assert y16_train.dtype == jnp.bfloat16
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(st))
    # Same params in float32 give nearly the same logits (bf16 has ~3 significant digits).
    y32 = model32.apply(v, X)
    scale = float(jnp.max(jnp.abs(y32)))
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.05 * scale + 1e-2)


# ---------------------------------------------------------------- PyTorch-like init

def _check_torch_init(params):
    """Kernels and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BN scale 1, bias 0.

    Returns the number of conv/dense layers checked.
    """
    n_checked = 0
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    by_layer: dict[str, dict] = {}
    for path, leaf in flat:
        names = [str(k.key) for k in path]
        by_layer.setdefault("/".join(names[:-1]), {})[names[-1]] = np.asarray(leaf)
    for layer, leaves in by_layer.items():
        if "kernel" in leaves:
            w = leaves["kernel"]
            fan_in = int(np.prod(w.shape[:-1]))
            bound = 1.0 / math.sqrt(fan_in)
            assert np.abs(w).max() <= bound, layer
            if w.size >= 200:  # P(max |w| < 0.9 b) = 0.9^n
                assert np.abs(w).max() >= 0.9 * bound, layer
            if w.size >= 500:  # U(-b, b) has std b / sqrt(3); standard error ~2% here
                np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.07, err_msg=layer)
                assert abs(w.mean()) <= 0.15 * bound, layer
            if "bias" in leaves:
                b = leaves["bias"]
                assert np.abs(b).max() <= bound, layer
                if b.size >= 16:
                    assert np.abs(b).max() >= 0.5 * bound, layer
            n_checked += 1
        else:  # BatchNorm
            np.testing.assert_array_equal(leaves["scale"], 1.0)
            np.testing.assert_array_equal(leaves["bias"], 0.0)
    return n_checked


@pytest.mark.parametrize("name,n_layers", [("simple_cnn", 6), ("simple_cnn_bn", 6), ("mlp", 3),
                                           ("resnet18", 21), ("vgg16", 14)])
def test_init_matches_pytorch_bounds(tiny, name, n_layers):
    _, v = tiny(name)
    assert _check_torch_init(v["params"]) == n_layers


def test_torch_bias_init_bound_and_validation():
    b = torch_bias_init(25)(KEY, (4000,))
    assert b.dtype == jnp.float32
    assert float(jnp.abs(b).max()) <= 0.2 and float(jnp.abs(b).max()) > 0.199
    with pytest.raises(ValueError, match="fan_in"):
        torch_bias_init(0)


def test_init_is_deterministic_in_key(tiny):
    model, a = tiny("simple_cnn")
    b = model.init(KEY, X)
    c = model.init(jax.random.key(1, impl="rbg"), X)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a["params"]["conv1"]["kernel"], c["params"]["conv1"]["kernel"])


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("name", ["simple_cnn_bn", "resnet18", "mlp"])
def test_gradients_nonzero_and_small_step_lowers_loss(tiny, name):
    model, v = tiny(name)
    labels = jnp.array([0, 1, 2, 3])
    params, rest = v["params"], {k: s for k, s in v.items() if k != "params"}

    def loss_fn(p):
        logits, _ = model.apply({"params": p, **rest}, X, train=True, mutable=list(rest))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for g in jax.tree.leaves(grads):
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
    # A small gradient step lowers the loss by ~ eps * |g|^2 (first-order Taylor).
    g2 = sum(float(jnp.sum(g * g)) for g in jax.tree.leaves(grads))
    eps = 1e-2 / g2
    new = jax.tree.map(lambda p, g: p - eps * g, params, grads)
    drop = float(loss) - float(loss_fn(new))
    assert 0.5 * eps * g2 < drop < 1.5 * eps * g2


# ---------------------------------------------------------------- registry and validation

def test_get_model_registry():
    assert set(MODELS) == {"simple_cnn", "mlp", "resnet18", "vgg16", "transformer_lm"}
    for name, cls in MODELS.items():
        m = get_model(name, 7)
        assert isinstance(m, cls) and m.num_classes == 7
    m = get_model("vgg16", 3, width=0.5, use_bn=False, dtype=jnp.bfloat16)
    assert (m.width, m.use_bn, m.dtype) == (0.5, False, jnp.bfloat16)


def test_get_model_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match=r"name must be one of .*'mlp'.*'resnet18'.*'simple_cnn'.*'transformer_lm'.*'vgg16'.*got 'resnet50'"):
        get_model("resnet50", 10)


def test_get_model_unknown_keyword():
    with pytest.raises(ValueError, match="unknown.*'depth'"):
        get_model("mlp", 10, depth=3)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "10"])
@pytest.mark.parametrize("cls", [SimpleCNN, MLP, ResNet18, VGG16])
def test_bad_num_classes(cls, bad):
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1, got"):
        cls(bad)


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), "1"])
def test_bad_width(bad):
    with pytest.raises(ValueError, match="width must be a finite number > 0"):
        SimpleCNN(10, width=bad)


def test_bad_hidden_dtype_and_stages():
    with pytest.raises(ValueError, match="hidden must be a sequence of ints >= 1, got"):
        MLP(10, hidden=(4, 0))
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        SimpleCNN(10, dtype=jnp.int32)
    with pytest.raises(ValueError, match="stage_sizes must be a sequence of 4 ints"):
        ResNet18(10, stage_sizes=(2, 2, 2))


def test_bad_input_rank():
    model = _tiny("simple_cnn")
    with pytest.raises(ValueError, match=r"x must be an NHWC image batch .* got shape \(8, 8, 1\)"):
        model.init(KEY, jnp.zeros((8, 8, 1)))


def test_simple_cnn_gap_head_averages_the_last_conv_features():
    from sfw_jax.training.models import _layers as layers
    model = SimpleCNN(10, width=0.5, use_bn=True, head="gap")
    x = jax.random.normal(KEY, (2, 12, 12, 3))
    v = model.init(KEY, x)
    assert "fc1" not in v["params"] and v["params"]["fc2"]["kernel"].shape == (32, 10)
    n_conv = sum(v["params"][f"conv{i}"]["kernel"].size for i in range(1, 5))
    assert n_conv / (n_conv + v["params"]["fc2"]["kernel"].size) > 0.95
    y, inter = model.apply(v, x, capture_intermediates=lambda m, _: m.name == "bn4")
    bn4 = inter["intermediates"]["bn4"]["__call__"][0]                    # (2, 6, 6, 32)
    feats = layers.max_pool_ceil(jax.nn.relu(bn4)).mean(axis=(1, 2))      # (2, 32)
    want = feats @ v["params"]["fc2"]["kernel"] + v["params"]["fc2"]["bias"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="head must be one of"):
        SimpleCNN(10, head="avg")
