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
