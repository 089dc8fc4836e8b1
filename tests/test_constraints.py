"""Constraint objects, make_constraints, expected_init_norms and input validation."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sfw_jax as S
from sfw_jax.fw import _gauges as gauges, _registry as registry
from sfw_jax.fw._sets import KSparsePolytope, LpBall, sparsity_k
from sfw_jax.fw.topk import METHODS
from sfw_jax.training import config as config_lib

PARAMS = {
    "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)},
    "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    "dense": {"kernel": jnp.full((400, 10), 0.5)},
}


def test_sparsity_k_rule():
    assert sparsity_k(72, 10, 0.05) == 10            # max(10, 3)
    assert sparsity_k(4, 10, 0.05) == 4              # capped at n
    assert sparsity_k(4000, 10, 0.05) == 200         # floor(0.05 * 4000)
    assert sparsity_k(4019, 10, 0.05) == 200         # floor(200.95)
    assert sparsity_k(4000, 300, 0.05) == 300


def test_make_constraints_k_sparse_radius_diameter_and_initialization():
    c = S.make_constraints(PARAMS, "k_sparse", mode="radius", value=0.3)
    assert c["dense"]["kernel"] == S.KSparsePolytope(200, 0.3)
    assert c["conv"]["kernel"].k == 10 and c["bn"]["scale"].k == 4
    assert c["dense"]["kernel"].diameter == pytest.approx(2 * 0.3 * math.sqrt(200))

    c = S.make_constraints(PARAMS, "k_sparse", mode="diameter", value=8.0)
    assert c["dense"]["kernel"].radius == pytest.approx(8.0 / (2 * math.sqrt(200)))
    assert c["dense"]["kernel"].diameter == pytest.approx(8.0)

    norms = jax.tree.map(lambda _: 2.0, PARAMS)
    c = S.make_constraints(PARAMS, "k_sparse", value=15.0, init_norms=norms)
    d = 2 * 15.0 * 2.0
    assert c["conv"]["kernel"].diameter == pytest.approx(d)
    assert c["conv"]["kernel"].radius == pytest.approx(d / (2 * math.sqrt(10)))


@pytest.mark.parametrize("kind,p,ratio", [("l1", 1.0, 1.0), ("l2", 2.0, 1.0),
                                          ("linf", math.inf, math.sqrt(4000)),
                                          ("lp", 4.0, 4000 ** 0.25)])
def test_make_constraints_lp_diameter_conversion(kind, p, ratio):
    c = S.make_constraints(PARAMS, kind, mode="diameter", value=6.0, p=p)
    ball = c["dense"]["kernel"]
    assert isinstance(ball, S.LpBall) and ball.p == p and ball.n == 4000
    # L2 diameter of the L_p ball of radius r in R^n: 2 r n^(1/2 - 1/p) for p > 2, else 2 r
    assert ball.radius == pytest.approx(3.0 / ratio)
    assert ball.diameter == pytest.approx(6.0)


def test_lp_ball_diameter_is_realized_by_two_points():
    """The stated L2 diameter equals the distance between two extreme points of the set."""
    n = 9
    for p in (1.0, 1.5, 2.0, 3.0, math.inf):
        ball = S.LpBall(p, 2.0, n)
        if p <= 2:
            a = np.zeros(n)
            a[0] = 2.0
        else:
            a = np.full(n, 2.0 * n ** (-1 / p if not math.isinf(p) else 0))
        assert float(gauges.lp_norm(jnp.asarray(a), p)) == pytest.approx(2.0, rel=1e-6)
        assert 2 * np.linalg.norm(a) == pytest.approx(ball.diameter, rel=1e-6)
    kp = S.KSparsePolytope(4, 1.5)
    v = np.asarray(kp.lmo(jnp.arange(1.0, 10.0)))
    assert 2 * np.linalg.norm(v) == pytest.approx(kp.diameter)


def test_make_constraints_where_and_unconstrained():
    c = S.make_constraints(PARAMS, "k_sparse", mode="radius", value=1.0,
                           where=lambda path, leaf: path[-1] == "kernel")
    assert isinstance(c["bn"]["scale"], S.Unconstrained)
    assert isinstance(c["conv"]["bias"], S.Unconstrained)
    assert isinstance(c["conv"]["kernel"], S.KSparsePolytope)
    mask = jax.tree.map(lambda x: x.ndim >= 2, PARAMS)
    c2 = S.make_constraints(PARAMS, "k_sparse", mode="radius", value=1.0, where=mask)
    assert c2 == c
    cu = S.make_constraints(PARAMS, "unconstrained")
    assert all(isinstance(x, S.Unconstrained) for x in jax.tree.leaves(cu, is_leaf=S.is_constraint))
    ks = S.make_constraints(PARAMS, "k_support", mode="radius", value=1.0)
    assert ks["dense"]["kernel"] == S.KSupportNormBall(200, 1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="k_sparse", k=0), r"k must be an int >= 1, got 0"),
    (dict(kind="k_sparse", k=2.5), r"k must be an int >= 1, got 2.5"),
    (dict(kind="k_sparse", k_frac=0.0), r"k_frac must be a number in \(0, 1\], got 0.0"),
    (dict(kind="k_sparse", k_frac=1.5), r"k_frac must be a number in \(0, 1\], got 1.5"),
    (dict(kind="k_sparse", mode="radius", value=-1.0), r"value must be a finite number > 0, got -1.0"),
    (dict(kind="k_sparse", mode="radius", value=math.inf), r"value must be a finite number > 0, got inf"),
    (dict(kind="lp", p=0.5, mode="radius", value=1.0), r"p must be a number >= 1 \(or inf\), got 0.5"),
    (dict(kind="ksparse"), r"kind must be one of .*'k_sparse'.*got 'ksparse'"),
    (dict(kind="k_sparse", mode="init"), r"mode must be one of .*got 'init'"),
    (dict(kind="k_sparse"), r"init_norms"),
])
def test_make_constraints_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.make_constraints(PARAMS, **kwargs)


def test_constraint_objects_validate():
    with pytest.raises(ValueError, match="radius must be a finite number > 0, got 0"):
        S.KSparsePolytope(3, 0)
    with pytest.raises(ValueError, match="radius must be a finite number > 0, got nan"):
        S.LpBall(2, math.nan)
    with pytest.raises(ValueError, match="diameter must be a finite number > 0, got -2"):
        S.KSparsePolytope.from_diameter(3, -2)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        S.KSupportNormBall(0, 1.0)
    with pytest.raises(ValueError, match="p must be a number >= 1"):
        S.LpBall(0.9, 1.0)
    with pytest.raises(ValueError, match="pass n"):
        S.LpBall(3, 1.0).diameter


def test_init_norms_tree_mismatch_and_bad_norm():
    with pytest.raises(ValueError, match="init_norms must have the structure of params"):
        S.make_constraints(PARAMS, "k_sparse", init_norms={"conv": 1.0})
    norms = jax.tree.map(lambda _: 1.0, PARAMS)
    norms["bn"]["scale"] = 0.0
    with pytest.raises(ValueError, match=r"init_norms\[bn/scale\] must be a finite number > 0"):
        S.make_constraints(PARAMS, "k_sparse", init_norms=norms)


@pytest.mark.parametrize("c", [S.KSparsePolytope(5, 0.2), S.LpBall(1, 1.0, 60),
                               S.LpBall(2, 1.0, 60), S.LpBall(math.inf, 0.1, 60),
                               S.LpBall(3.0, 0.5, 60), S.KSupportNormBall(4, 0.7)])
def test_shift_inside_contains_and_lmo_vertices(c):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((6, 10)).astype(np.float32) * 3)
    assert not bool(c.contains(x))
    y = c.shift_inside(x)
    assert bool(c.contains(y))
    inside = 0.5 * c.shift_inside(x)
    np.testing.assert_array_equal(np.asarray(c.shift_inside(inside)), np.asarray(inside))
    v = c.lmo(jnp.asarray(rng.standard_normal((6, 10)).astype(np.float32)))
    assert bool(c.contains(v))
    # the gauge of an LMO output sits on the boundary
    assert float(c.gauge(v)) == pytest.approx(c.radius, rel=1e-5)
    # shift_inside is a positive scaling of x
    ratio = np.asarray(y).reshape(-1) / np.asarray(x).reshape(-1)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert 0 < ratio[0] < 1


def test_k_sparse_shift_inside_matches_reference_rule():
    """min(floor(||x||_1/||x||_inf), K) * r * x / ||x||_1, as in the reference."""
    x = np.array([3.0, -1.0, 0.5, 2.0, 0.0, -0.25], np.float32)
    c = S.KSparsePolytope(2, 0.4)
    l1, linf = np.abs(x).sum(), np.abs(x).max()
    expected = min(math.floor(l1 / linf), 2) * 0.4 * x / l1
    np.testing.assert_allclose(np.asarray(c.shift_inside(jnp.asarray(x))), expected, rtol=1e-6)


@pytest.mark.parametrize("c", [S.KSparsePolytope(3, 0.5), S.LpBall(1, 1.0), S.LpBall(2, 1.0),
                               S.LpBall(math.inf, 0.3)])
def test_project_is_nearest_point(c):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal(12).astype(np.float32) * 2)
    p = np.asarray(c.project(x), np.float64)
    assert bool(c.contains(jnp.asarray(p, jnp.float32)))
    xs = np.asarray(x, np.float64)
    # no point of the set is closer: compare against many random feasible points
    for _ in range(200):
        y = np.asarray(c.shift_inside(jnp.asarray(rng.standard_normal(12).astype(np.float32))),
                       np.float64) * rng.uniform(0, 1)
        assert np.linalg.norm(xs - p) <= np.linalg.norm(xs - y) + 1e-5


def test_project_not_cheap_raises():
    with pytest.raises(NotImplementedError, match="no closed form for p=3"):
        S.LpBall(3.0, 1.0).project(jnp.ones(3))
    with pytest.raises(NotImplementedError, match="KSupportNormBall has no cheap"):
        S.KSupportNormBall(2, 1.0).project(jnp.ones(3))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_constraint_methods_jit_every_dtype(dtype):
    c = S.KSparsePolytope(4, 0.25)
    x = jnp.asarray(np.linspace(-2, 2, 30), dtype)
    y = jax.jit(c.shift_inside)(x)
    assert y.dtype == dtype
    assert bool(jax.jit(c.contains)(y))
    assert jax.jit(c.lmo)(x).dtype == dtype


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8, kernel_init=nn.initializers.normal(0.5))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        return nn.Dense(3, kernel_init=nn.initializers.uniform(1.0))(x)


def test_expected_init_norms_per_leaf():
    model = _Tiny()
    x = jnp.ones((1, 5))
    norms = S.expected_init_norms(lambda key: model.init(key, x)["params"], jax.random.key(0),
                                  n_samples=400, rule="per_leaf")
    # E||W|| for W ~ N(0, s^2 I_n) is close to s sqrt(n) for moderate n
    assert norms["Dense_0"]["kernel"] == pytest.approx(0.5 * math.sqrt(40), rel=0.03)
    # uniform(0, 1) entries: E||W|| ~ sqrt(n / 3)
    assert norms["Dense_1"]["kernel"] == pytest.approx(math.sqrt(24 / 3), rel=0.03)
    # BatchNorm scale = ones (norm sqrt(8)), zero-initialized biases fall back to 1.0; per leaf,
    # so scale and bias of the same shape get different norms (unlike the reference)
    assert norms["BatchNorm_0"]["scale"] == pytest.approx(math.sqrt(8))
    assert norms["BatchNorm_0"]["bias"] == 1.0
    assert norms["Dense_0"]["bias"] == 1.0
    # the reference's shape table: the (8,) leaves all take the last one's value (BN bias, 1.0)
    ref = S.expected_init_norms(lambda key: model.init(key, x)["params"], jax.random.key(0),
                                n_samples=400)
    assert ref["BatchNorm_0"]["scale"] == ref["BatchNorm_0"]["bias"] == 1.0
    assert ref["Dense_0"]["kernel"] == norms["Dense_0"]["kernel"]
    with pytest.raises(ValueError, match="n_samples must be an int >= 1, got 0"):
        S.expected_init_norms(lambda key: model.init(key, x)["params"], jax.random.key(0), 0)


def test_make_feasible_and_structure_mismatch():
    c = S.make_constraints(PARAMS, "k_sparse", mode="radius", value=0.1)
    feas = S.make_feasible(PARAMS, c)
    assert S.contains_all(feas, c) and not S.contains_all(PARAMS, c)
    with pytest.raises(ValueError, match="constraints must be a pytree of constraint objects"):
        S.make_feasible({"conv": PARAMS["conv"]}, c)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(7,), (3, 3, 16, 16), (300, 130)])
def test_two_phase_lmo_equals_lmo(method, shape):
    """lmo_vertex(g, lmo_select(g)) == lmo(g) for every top-k path (the SFW update uses it)."""
    g = jax.random.normal(jax.random.key(3), shape)
    g = g.at[..., :2].set(0.0)                                  # zeros take v = +r
    k = min(max(10, int(0.05 * g.size)), g.size)
    for c in (KSparsePolytope(k, 0.7, method), LpBall(2.0, 1.5)):
        two_phase = jax.jit(lambda g, c=c: c.lmo_vertex(g, c.lmo_select(g)))(g)
        np.testing.assert_array_equal(np.asarray(two_phase), np.asarray(jax.jit(c.lmo)(g)))


@dataclasses.dataclass(frozen=True)
class _Box(S.Constraint):
    """A toy set for the registry test: the box [lo, lo + width]^n (not centred at 0)."""

    lo: float
    width: float
    n: int

    @property
    def radius(self) -> float:          # contains(): gauge(x) <= radius
        return 1.0

    @property
    def diameter(self) -> float:
        return self.width * math.sqrt(self.n)

    def lmo(self, g):
        return jnp.where(g > 0, self.lo, self.lo + self.width).astype(g.dtype)

    def gauge(self, x):
        return jnp.max(jnp.abs(x - (self.lo + self.width / 2))) / (self.width / 2)


@pytest.fixture
def box_kind():
    """Registers the kind 'test_box' (radius r: the box [0, 2r]^n) and removes it afterwards."""
    def build(shape, opts, radius, diameter):
        n = int(np.prod(shape))
        width = 2 * radius if diameter is None else diameter / math.sqrt(n)
        return _Box(0.0, width, n)

    S.register_constraint("test_box", build)
    yield "test_box"
    registry._REGISTRY.pop("test_box")


def test_a_registered_kind_works_in_make_constraints_sfw_and_config(box_kind):
    """One class and one registration line: make_constraints builds it per leaf (sizes from
    mode/value, the fallback elsewhere), sfw trains it (with the classic step 2 / (t + 2) the
    iterate reaches argmin ||x - t||^2 over the box, t clipped to it, here a vertex), and
    TrainConfig accepts the name."""
    assert box_kind in S.KINDS and "k_sparse" in S.KINDS
    params = {"w": jnp.full((4, 3), 0.5), "b": jnp.ones((3,))}
    cons = S.make_constraints(params, box_kind, mode="radius", value=0.5, where=S.is_kernel)
    assert cons["w"] == _Box(0.0, 1.0, 12) and cons["b"] == S.Unconstrained()
    assert S.make_constraints(params, box_kind, mode="diameter", value=2.0)["b"] == _Box(
        0.0, 2.0 / math.sqrt(3), 3)
    target = jnp.where(jnp.arange(12).reshape(4, 3) % 3 == 0, 2.0, -1.0)
    loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
    tx = S.sfw(lambda t: 2.0 / (t + 2.0), cons, momentum=0.0, rescale=None,
               unconstrained=optax.sgd(0.1))
    state, p = tx.init(params), params
    for _ in range(100):
        u, state = tx.update(jax.grad(loss)(p), state, p)
        p = optax.apply_updates(p, u)
        assert bool(cons["w"].contains(p["w"]))
    np.testing.assert_allclose(np.asarray(p["w"]), np.clip(np.asarray(target), 0.0, 1.0),
                               atol=1e-3)
    assert float(jnp.abs(p["b"]).max()) < 1e-6           # SGD: b = 0.8^100 from b = 1
    cfg = config_lib.validate(config_lib.TrainConfig(constraint=box_kind, tau=0.5))
    assert cfg.constraint == box_kind
    with pytest.raises(ValueError, match="constraint kind 'test_box' is already registered"):
        S.register_constraint(box_kind, lambda *a: None)
    with pytest.raises(ValueError, match=r"kind must be one of \(.*'test_box'.*\), got 'box'"):
        S.make_constraints(params, "box")
