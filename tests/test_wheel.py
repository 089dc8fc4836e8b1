"""The distribution as a user gets it: ``python -m build`` (an sdist, then the wheel built from
it), the wheel installed into a fresh virtualenv and run from a folder outside the clone.

The virtualenv sees this interpreter's site-packages for the dependencies (a ``.pth`` file
naming them: the paths only, so no editable install of this checkout there is activated), and
nothing is downloaded but the build backend; the wheel goes in with ``--no-deps``, and every
check asserts that the code it ran came from the wheel.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import sfw_jax
from sfw_jax.training import run_folder
from tests.test_packaging import ROOT, requirement_lines

pytestmark = pytest.mark.slow

SHIPPED = ("sfw_jax/__init__.py", "sfw_jax/fw/_native/sfw_cpu.cc", "sfw_jax/training/cli.py",
           "experiments/quickstart.py", "experiments/train.py", "benchmarks/device_suite.py",
           "benchmarks/suite/plans.py")


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=dist)
    (whl,) = dist.glob("sfw_jax-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(venv folder, environment, an empty working folder) with the wheel installed."""
    base = tmp_path_factory.mktemp("user")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=base)
    (site,) = venv.glob("lib/python*/site-packages")
    parent = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (site / "parent_env.pth").write_text("".join(f"{p}\n" for p in sorted(parent)))
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          wheel], cwd=base)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SFW_JAX_CACHE"] = str(base / "kernel-cache")     # a kernel built from the wheel's source
    work = base / "work"
    work.mkdir()
    return venv, env, work


def test_wheel_holds_the_packages_the_kernel_source_and_the_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"sfw_jax-{sfw_jax.__version__}.dist-info"
        meta = email.message_from_bytes(z.read(f"{info}/METADATA"))
        licence = z.read(f"{info}/licenses/LICENSE")
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert set(SHIPPED) <= names
    assert not any(n.startswith("tests/") for n in names)
    assert licence == (ROOT / "LICENSE").read_bytes()
    assert meta["Version"] == sfw_jax.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist")
    assert [r for r in requires if "extra ==" not in r] == [
        str(r) for r in requirement_lines("requirements.txt")]
    assert meta.get_all("Provides-Extra") == ["tfds"]
    assert "sfw-train = sfw_jax.training.cli:main" in entry_points


def test_installed_wheel_works_outside_the_clone(installed):
    venv, env, work = installed
    python, site = venv / "bin" / "python", str(venv / "lib")
    # import sfw_jax: from the wheel, and the native kernel builds from the installed source
    out = _run([python, "-c", "import json, sfw_jax, experiments, benchmarks\n"
                "from sfw_jax.fw import native\n"
                "print(json.dumps([sfw_jax.__file__, experiments.__file__, benchmarks.__file__,"
                " str(native._SOURCE), native.unavailable_reason()]))"], cwd=work, env=env)
    *files, source, reason = json.loads(out.splitlines()[-1])
    assert all(f.startswith(site) for f in files + [source]), files
    assert reason is None
    assert len(list(Path(env["SFW_JAX_CACHE"]).glob("sfw_cpu_*.so"))) == 1
    # the console script
    assert "usage: sfw-train" in _run([venv / "bin" / "sfw-train", "--help"], cwd=work, env=env)
    # the documented python -m command lines
    for module in ("experiments.quickstart", "benchmarks.device_suite"):
        assert f"usage: python -m {module}" in _run([python, "-m", module, "--help"], cwd=work,
                                                     env=env)
    # one epoch on the bundled digits, on the native kernel (batches of 16: 80 steps, enough
    # for SFW to move off the uniform guess, whose loss is ln 10 = 2.30)
    _run([venv / "bin" / "sfw-train", "--preset", "quickstart-digits", "--epochs", "1",
          "--batch-size", "16", "--cpu-kernel", "on", "--no-progress", "--out-dir", "run"],
         cwd=work, env=env)
    config = json.loads((work / "run" / run_folder.CONFIG_FILE).read_text())
    assert config["epochs"] == 1 and config["cpu_kernel"] is True
    epochs = (work / "run" / run_folder.METRICS_FILE).read_text().splitlines()
    assert len(epochs) == 1
    final = json.loads((work / "run" / run_folder.FINAL_FILE).read_text())
    assert final["epochs"] == 1
    assert final["test_loss"] < 2.0 and final["test_acc"] > 0.2          # chance: 0.1
