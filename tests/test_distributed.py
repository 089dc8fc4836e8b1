"""Data parallelism: 4 (forced host) devices train to the same parameters as 1 device.

The comparison runs in a subprocess because ``XLA_FLAGS=--xla_force_host_platform_device_count``
must be set before JAX initialises its CPU backend.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sfw_jax.training import distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from sfw_jax.training import loop as train_lib
    from sfw_jax.training.config import TrainConfig, validate
    from tests.test_train import small_config, tiny_dataset

    assert len(jax.devices()) == 4, jax.devices()
    ds = tiny_dataset(n_train=128)
    # SFW on every tensor of a BatchNorm CNN: BN batch statistics must be global-batch ones.
    cfg = small_config(arch="simple_cnn", model_kwargs={"width": 0.125, "use_bn": True},
                       epochs=2, batch_size=32, eval_batch_size=30)
    runs = {n: train_lib.train(cfg.replace(num_devices=n), ds) for n in (1, 4)}
    one, four = runs[1], runs[4]
    rel = {}
    for name, a, b in (("params", four.state.params, one.state.params),
                       ("batch_stats", four.state.batch_stats, one.state.batch_stats)):
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            rel[name + jax.tree_util.keystr(path)] = float(
                np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12))
    replicated = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(four.state))
    err = ""
    try:
        train_lib.check_run_preconditions(validate(cfg.replace(batch_size=30)),
                                          train_lib.setup_devices(validate(cfg)))
    except ValueError as e:
        err = str(e)
    print("RESULT " + json.dumps({
        "rel": rel, "losses1": [h["train_loss"] for h in one.history],
        "losses4": [h["train_loss"] for h in four.history], "test1": one.test,
        "test4": four.test, "n_devices": len(four.state.params["conv1"]["kernel"].devices()),
        "replicated": replicated, "divisibility_error": err}))
""")


@pytest.mark.slow
def test_four_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    assert res["n_devices"] == 4
    assert res["replicated"]  # params, BN stats and optimizer state replicated
    assert len(res["rel"]) > 10
    worst = max(res["rel"].values())
    assert worst < 1e-5, sorted(res["rel"].items(), key=lambda kv: -kv[1])[:3]
    np.testing.assert_allclose(res["losses4"], res["losses1"], rtol=1e-5)
    assert abs(res["test4"]["accuracy"] - res["test1"]["accuracy"]) <= 1 / 64 + 1e-12
    assert ("batch_size must be divisible by the number of devices (4) for data parallelism, "
            "got 30") in res["divisibility_error"]


def test_mesh_helpers_single_process():
    mesh = dist.make_mesh(dist.select_devices(1))
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == 1
    dist.check_batch_divisible(7, mesh)  # anything divides by 1
    x = dist.shard_batch(np.arange(8.0), mesh)
    assert x.sharding.spec == dist.data_sharding(mesh).spec
    np.testing.assert_array_equal(np.asarray(x), np.arange(8.0))
    with pytest.raises(ValueError, match=r"num_devices must be an int in \[1, \d+\]"):
        dist.select_devices(0)
