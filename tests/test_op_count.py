"""``benchmarks.op_count``: instruction counts of an optimized HLO entry computation."""

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.op_count import entry_counts
from sfw_jax.fw import topk


def _compiled(f, *args) -> str:
    return jax.jit(f).lower(*args).compile().as_text()


def test_counts_loops_conditionals_and_fusions():
    def f(x):
        y = lax.while_loop(lambda c: c[0] < c[1].sum(), lambda c: (c[0] + 1, c[1] * 0.5),
                           (jnp.int32(0), x))[1]
        return lax.cond(y.sum() > 0, lambda v: jnp.sin(v) * 2, lambda v: jnp.cos(v) + 1, y)

    c = entry_counts(_compiled(f, jnp.ones(1000)))
    assert (c["while"], c["conditional"], c["custom_call"]) == (1, 1, 0)
    assert c["instructions"] >= c["ops"] >= c["fusion"] + 2
    assert entry_counts(_compiled(lambda x: jnp.sin(x) * 2 + 1, jnp.ones(8))) == {
        "instructions": 2, "ops": 1, "fusion": 1, "custom_call": 0, "while": 0,
        "conditional": 0}                   # the parameter and one loop fusion


def test_bisect_compiles_without_loops():
    x = jnp.ones((4, 5000))
    bisect = entry_counts(_compiled(lambda v: topk.top_k_threshold(v, 100, method="bisect"), x))
    search = entry_counts(_compiled(lambda v: topk.top_k_threshold(v, 100, method="search"), x))
    assert bisect["while"] == bisect["conditional"] == 0 and bisect["fusion"] > 0
    assert search["conditional"] > 0


def test_accelerator_default_is_the_gpu_resolution_on_any_backend():
    """``sfw_accelerator_default``: the XLA path with batching, tree selection and methods
    resolved for a GPU, compiled here: no native custom call, no loop or conditional, and the
    same program as naming those options."""
    from benchmarks.op_count import _step_hlo, accelerator_default
    from sfw_jax import make_constraints, sfw
    from sfw_jax.fw import BATCH_SELECT, TREE_SELECT

    params = {"a": jnp.ones((40, 50)), "b": jnp.ones((40, 50)), "c": jnp.ones((20, 100))}
    grads = jax.tree.map(jnp.zeros_like, params)
    cons = make_constraints(params, "k_sparse", k=5, value=1.0, mode="radius")  # method auto
    acc = entry_counts(_step_hlo(accelerator_default(0.1, cons, params), params, grads))
    assert acc["custom_call"] == acc["while"] == acc["conditional"] == 0
    method = topk.resolve_method(2000, "auto", "gpu")
    named = sfw(0.1, make_constraints(params, "k_sparse", k=5, value=1.0, mode="radius",
                                      method=method),
                cpu_kernel=False, batch_select=BATCH_SELECT.get("gpu", BATCH_SELECT["default"]),
                tree_select=TREE_SELECT.get("gpu", TREE_SELECT["default"]))
    assert entry_counts(_step_hlo(named, params, grads)) == acc
    here = entry_counts(_step_hlo(sfw(0.1, cons, cpu_kernel=False), params, grads))
    if jax.default_backend() == "cpu":          # 'auto' is 'search' / 'sort' here: it differs
        assert here != acc
