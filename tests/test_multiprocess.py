"""Multi-process training on JAX's distributed runtime: two processes on localhost (CPU backend,
gloo collectives, one device each) against one process with two devices.

One scenario, run as the user would run it (``sfw-train ... --distributed``):
the two-process run loses process 1 right after the first epoch's checkpoint (it kills itself,
deterministically, from an epoch callback), process 0 must leave with a one-line error; both
then resume from that checkpoint and must end with the numbers of the uninterrupted
one-process, two-device run; ``prune_sweep`` then reads the run folder on one process.

Every subprocess runs in its own process group under a timeout that kills the group, so a
regression (a hang) fails the test instead of hanging CI.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARGS = ["--dataset", "digits", "--arch", "simple_cnn", "--model-kw", "width=0.25",
        "--model-kw", "use_bn=true", "--optimizer", "sfw", "--epochs", "2", "--batch-size", "64",
        "--eval-batch-size", "64", "--val-fraction", "0.1", "--seed", "0", "--no-progress"]
"""The run: BatchNorm (batch statistics of the global batch), a validation split of 144 and a
test split of 360 examples in eval batches of 64 (each split's last batch is partial)."""

LEG_TIMEOUT_S = 300
"""Bound of each launch (about 15 s on an idle 2-core machine; generous for a loaded one)."""
EXIT_AFTER_PEER_DEATH_S = 90
"""Bound on how long process 0 may take to leave once process 1 is dead (a few seconds: its
next collective fails at once; JAX's own heartbeat path would take 60 s and abort instead)."""

# ``sfw-train`` (``cli.main``, what ``python -m experiments.train`` runs) with gloo collectives
# also set in the config: jax < 0.6 does not read JAX_CPU_COLLECTIVES_IMPLEMENTATION.
TRAIN = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from sfw_jax.training import cli
    sys.exit(cli.main(sys.argv[1:]))
""")

# Process 1 dies (SIGKILL) once checkpoint 1 is committed: a deterministic interruption one
# epoch in, while process 0 is already inside epoch 2's collectives.
KILLER = textwrap.dedent("""
    import os, signal, sys, time
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from sfw_jax.training import cli, loop

    out = sys.argv[sys.argv.index("--out-dir") + 1]

    def die_after_first_checkpoint(record, state):
        if record["epoch"] == 1 and jax.process_index() == 1:
            deadline = time.time() + 120
            while not os.path.isdir(os.path.join(out, "checkpoints", "1")):
                if time.time() > deadline:
                    sys.exit("checkpoint 1 was never committed")
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

    train = loop.train
    loop.train = lambda cfg, *a, **k: train(cfg, *a, callbacks=[die_after_first_checkpoint], **k)
    sys.exit(cli.main(sys.argv[1:]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


class Launch:
    """Subprocesses in their own process groups, output in files, killed on a timeout."""

    def __init__(self, tmp, name: str):
        self.tmp, self.name, self.procs, self.files = tmp, name, [], []

    def start(self, argv: list[str], env: dict) -> subprocess.Popen:
        i = len(self.procs)
        out = open(self.tmp / f"{self.name}{i}.out", "w")
        err = open(self.tmp / f"{self.name}{i}.err", "w")
        self.files += [out, err]
        p = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=out,
                             stderr=err, start_new_session=True)
        self.procs.append(p)
        return p

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def wait(self, timeout: float) -> list[int]:
        """Exit codes of every process; kills them all and fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name}: still running after {timeout} s (a hang?); "
                        f"stderr: {self.stderr(0)[-2000:]}")
        finally:
            for f in self.files:
                f.close()
        return [p.returncode for p in self.procs]

    def stdout(self, i: int) -> str:
        return (self.tmp / f"{self.name}{i}.out").read_text()

    def stderr(self, i: int) -> str:
        return (self.tmp / f"{self.name}{i}.err").read_text()


def _two_processes(tmp, name: str, argv: list[str], extra: tuple = ((), ())) -> Launch:
    """``argv`` as processes 0 and 1 of a two-process run; ``extra[i]``: process i's own
    arguments."""
    launch = Launch(tmp, name)
    port = _free_port()
    for pid in range(2):
        launch.start([*argv, "--distributed", "--coordinator-address", f"127.0.0.1:{port}",
                      "--num-processes", "2", "--process-id", str(pid), *extra[pid]], _env(1))
    return launch


def _ours(text: str) -> list[str]:
    """The lines of ``text`` other than gloo's own ``[Gloo] Rank i is connected ...``."""
    return [line for line in text.splitlines() if not line.startswith("[Gloo]")]


def _history(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final(out: str) -> dict:
    with open(os.path.join(out, "final.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_two_processes_survive_a_death_resume_and_match_one_process_two_devices(tmp_path):
    two, ref = str(tmp_path / "two"), str(tmp_path / "ref")

    # 1. Two processes; process 1 dies after checkpoint 1 is committed.
    leg1 = _two_processes(tmp_path, "leg1", ["-c", KILLER, *ARGS, "--out-dir", two])
    try:
        p0, p1 = leg1.procs
        p1.wait(LEG_TIMEOUT_S)
        dead_at = time.monotonic()
        p0.wait(EXIT_AFTER_PEER_DEATH_S)
        survivor_s = time.monotonic() - dead_at
    except subprocess.TimeoutExpired:
        leg1.kill()
        pytest.fail(f"leg 1 hung; process 0 stderr: {leg1.stderr(0)[-2000:]}")
    finally:
        codes = leg1.wait(1)
    assert codes[1] == -signal.SIGKILL, leg1.stderr(1)[-2000:]
    assert codes[0] == 1, leg1.stderr(0)[-2000:]
    assert survivor_s < EXIT_AFTER_PEER_DEATH_S
    err0 = leg1.stderr(0)
    assert "Traceback" not in err0, err0[-2000:]
    errors = [s for s in err0.splitlines() if "error" in s.lower()]
    assert len(errors) == 1 and errors[0].startswith(
        "error: process 0 of 2: a collective with the other processes failed ("), errors
    assert "restart every process with --resume" in errors[0]
    assert os.listdir(os.path.join(two, "checkpoints")) == ["1"]
    assert [r["epoch"] for r in _history(two)] == [1]
    assert not os.path.exists(os.path.join(two, "final.json"))

    # 2. Both resume from checkpoint 1; the uninterrupted reference: one process, two devices.
    leg2 = _two_processes(tmp_path, "leg2", ["-c", TRAIN, *ARGS, "--out-dir", two, "--resume"])
    assert leg2.wait(LEG_TIMEOUT_S) == [0, 0], leg2.stderr(0)[-2000:] + leg2.stderr(1)[-2000:]
    one = Launch(tmp_path, "ref")
    one.start(["-m", "experiments.train", *ARGS, "--out-dir", ref], _env(2))
    assert one.wait(LEG_TIMEOUT_S) == [0], one.stderr(0)[-2000:]

    # Only process 0 prints (and writes); gloo itself announces its connections.
    assert "resuming from" in leg2.stderr(0) and "after epoch 1" in leg2.stderr(0)
    assert _ours(leg2.stdout(1)) == [] and _ours(leg2.stderr(1)) == []
    assert [line.split()[:2] for line in _ours(leg2.stdout(0))] == [
        ["epoch", "2/2"], ["test_loss", f"{_final(two)['test_loss']:.4f}"]]

    # The same computation: the all-reduce of two devices' partial sums is one addition (exact
    # and commutative), whether within one process or across two over gloo, and the checkpoint
    # restores the state bit for bit; so the curves agree to float32 rounding (2e-6 relative:
    # a few ulps of float32, for any difference in how XLA fuses the two programs).
    h2, h1 = _history(two), _history(ref)
    assert [r["epoch"] for r in h2] == [1, 2]
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([r[key] for r in h2], [r[key] for r in h1], rtol=2e-6)
    for key in ("train_acc", "val_acc", "weight_counts", "step", "lr"):
        assert [r[key] for r in h2] == [r[key] for r in h1], key
    f2, f1 = _final(two), _final(ref)
    assert f2["test_acc"] == f1["test_acc"]
    np.testing.assert_allclose(f2["test_loss"], f1["test_loss"], rtol=2e-6)

    from sfw_jax.training import run_folder
    (params2, bs2), (params1, bs1) = (run_folder.restore_variables(d) for d in (two, ref))
    import jax
    for a, b in zip(jax.tree.leaves((params2, bs2)), jax.tree.leaves((params1, bs1))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)

    # 3. One-shot pruning reads the two-process run folder on one process.
    from experiments import prune_sweep
    assert prune_sweep.main([two, "--sparsities", "0", "90", "--scope", "kernels",
                             "--no-progress"]) == 0
    with open(os.path.join(two, "sweep.json")) as f:
        rows = {r["target_sparsity"]: r for r in json.load(f)["rows"]}
    assert rows[0.0]["test_acc"] == f2["test_acc"]  # the dense net, evaluated on one device
    assert rows[0.9]["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_processes_that_disagree_stop_with_one_line(tmp_path):
    launch = _two_processes(tmp_path, "differ", ["-c", TRAIN, *ARGS],
                            extra=((), ("--batch-size", "32")))
    assert launch.wait(LEG_TIMEOUT_S) == [2, 2]
    for i in range(2):
        assert _ours(launch.stderr(i)) == [
            "sfw-train: error: option batch_size differs between processes (process(es) [1] vs "
            "process 0): every process must run the same command on the same data"]


@pytest.mark.parametrize("argv", [
    ["prune_sweep", "RUN", "--distributed"],
    ["prune_sweep", "RUN", "--num-processes", "2"],
    ["retrain", "RUN", "--coordinator-address", "10.0.0.1:1234"],
    ["study", "--preset", "digits-smoke", "--set", "distributed=true"],
])
def test_one_process_commands_refuse_distributed_flags(argv, capsys):
    import importlib
    mod = importlib.import_module(f"experiments.{argv[0]}")
    with pytest.raises(SystemExit) as e:
        mod.main(argv[1:])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "runs on one process" in err, err


def test_initialize_passes_the_timeouts_this_jax_accepts(monkeypatch):
    from sfw_jax.training import distributed as dist
    calls = []

    def old_initialize(coordinator_address=None, num_processes=None, process_id=None,
                       local_device_ids=None, initialization_timeout=300):  # jax 0.4.35's
        calls.append(dict(coordinator_address=coordinator_address, num_processes=num_processes,
                          process_id=process_id, initialization_timeout=initialization_timeout))

    monkeypatch.setattr(dist.jax.distributed, "initialize", old_initialize)
    assert dist.initialize_distributed("h:1", 2, 1) == {"initialization_timeout": 300}
    assert calls == [dict(coordinator_address="h:1", num_processes=2, process_id=1,
                          initialization_timeout=300)]

    def new_initialize(coordinator_address=None, num_processes=None, process_id=None, *,
                       initialization_timeout=300, heartbeat_timeout_seconds=100,
                       shutdown_timeout_seconds=300):  # jax >= 0.8.1
        calls.append((heartbeat_timeout_seconds, shutdown_timeout_seconds))

    monkeypatch.setattr(dist.jax.distributed, "initialize", new_initialize)
    assert dist.initialize_distributed(heartbeat_timeout=7) == {
        "initialization_timeout": 300, "heartbeat_timeout_seconds": 7,
        "shutdown_timeout_seconds": dist.SHUTDOWN_TIMEOUT_S}
    assert calls[-1] == (7, dist.SHUTDOWN_TIMEOUT_S)


def test_collective_failures_are_recognised_through_their_chain():
    import jax
    from sfw_jax.training import distributed as dist
    gloo = jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: Connection reset")
    try:
        try:
            raise gloo
        except jax.errors.JaxRuntimeError as e:
            raise OSError("wrapped by a library") from e
    except OSError as wrapped:
        assert dist.is_collective_failure(wrapped)
    assert dist.is_collective_failure(gloo)
    assert dist.is_collective_failure(TimeoutError("barrier"))
    assert not dist.is_collective_failure(ValueError("batch_size must be ..."))
    # One process: nothing is caught, nothing exits.
    with pytest.raises(jax.errors.JaxRuntimeError):
        with dist.exit_on_collective_failure():
            raise gloo


def test_one_process_helpers_are_the_plain_path():
    from sfw_jax.training import distributed as dist
    mesh = dist.make_mesh(dist.select_devices(1))
    tree = {"w": np.array([-0.0, 1.5, np.nan], np.float32), "k": np.arange(3, dtype=np.uint32)}
    assert dist.broadcast_from_main(tree) is tree
    dist.check_same_on_all_processes({"anything": b"x"})  # no collective, no error
    x = dist.global_array(tree["w"], dist.replicated(mesh))
    assert x.sharding == dist.replicated(mesh)
    assert np.asarray(x).tobytes() == tree["w"].tobytes()
    bits = dist._bits(tree["w"])  # what the broadcast sums: every bit kept, -0.0 and NaN too
    assert bits.dtype == np.uint32 and bits.view(np.float32).tobytes() == tree["w"].tobytes()
    assert dist.is_initialized() is False  # this pytest process never initialised it
