"""``sfw(cpu_kernel=None)`` wherever the native CPU kernel cannot run: one warning naming the
reason, then the XLA path (the same updates, bitwise), never an exception; ``cpu_kernel=True``
raises :class:`NativeKernelError` with the same reason.

Each reason is made real where that is cheap (no compiler on PATH, a compiler that fails, a
file that is not a library, a library without the kernel's symbol) and simulated otherwise (an
old jax without ``jax.ffi``, another CPU, a registration error). None needs a working compiler,
so these run on every machine.
"""

from __future__ import annotations

import functools
import os
import stat
import warnings

import _ctypes
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sfw_jax import sfw
from sfw_jax.fw import native
from sfw_jax.fw import _sfw as sfw_mod
from sfw_jax.fw._sets import KSparsePolytope
from tests.conftest import fresh_native_kernel


def _no_jax_ffi(monkeypatch, tmp_path):
    monkeypatch.delattr(jax, "ffi")                           # as in jax < 0.4.38
    return "needs jax.ffi.ffi_call, jax.ffi.include_dir"


def _no_compiler(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    return "needs a C++ compiler"


def _not_x86(monkeypatch, tmp_path):
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    return "x86-64 CPUs only, this machine is 'aarch64'"


def _build_fails(monkeypatch, tmp_path):
    cxx = tmp_path / "cxx"
    cxx.write_text("#!/bin/sh\necho 'error: simulated' >&2\nexit 1\n")
    cxx.chmod(cxx.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CXX", str(cxx))
    return f"compiling {native._SOURCE} failed ({cxx} "


def _load_fails(monkeypatch, tmp_path):
    bad = tmp_path / "not_a_library.so"
    bad.write_bytes(b"not an ELF file")
    monkeypatch.setattr(native, "build", lambda: bad)
    return f"loading {bad} failed"


def _symbol_missing(monkeypatch, tmp_path):
    other = _ctypes.__file__                                  # a real library, another one
    monkeypatch.setattr(native, "build", lambda: other)
    return f"loading {other} failed"


def _register_fails(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise RuntimeError("simulated registration error")

    monkeypatch.setattr(native, "build", lambda: "sfw_cpu.so")
    monkeypatch.setattr(native.ctypes.cdll, "LoadLibrary",
                        lambda path: type("Lib", (), {"SfwSelectF32": None})())
    monkeypatch.setattr(jax.ffi, "pycapsule", lambda fn: fn)
    monkeypatch.setattr(jax.ffi, "register_ffi_target", refuse)
    return "with jax.ffi failed: simulated registration error"


REASONS = {"no jax.ffi": _no_jax_ffi, "no compiler": _no_compiler, "not x86-64": _not_x86,
           "build fails": _build_fails, "load fails": _load_fails,
           "symbol missing": _symbol_missing, "registration fails": _register_fails}


def _params():
    key = jax.random.split(jax.random.key(3), 2)
    return {"w": 0.05 * jax.random.normal(key[0], (3, 3, 16, 32)),      # K < n: kernel-eligible
            "b": 0.05 * jax.random.normal(key[1], (32,))}


def _updates(cpu_kernel, steps=2):
    """The updates of ``steps`` SFW steps on a quadratic, K-sparse on both leaves."""
    params = _params()
    cons = {"w": KSparsePolytope(200, 0.5), "b": KSparsePolytope(4, 0.5)}
    tx = sfw(0.5, cons, momentum=0.9, cpu_kernel=cpu_kernel)
    grad = jax.grad(lambda p: sum(jnp.sum((x - 1.0) ** 2) for x in jax.tree.leaves(p)))
    step, state, out = jax.jit(tx.update), tx.init(params), []
    for _ in range(steps):
        u, state = step(grad(params), state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out


@functools.lru_cache(maxsize=None)
def _xla_updates():
    return _updates(False)


@pytest.mark.parametrize("reason", list(REASONS))
def test_auto_warns_once_and_takes_the_xla_path(reason, monkeypatch, tmp_path):
    fresh_native_kernel(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    expected = REASONS[reason](monkeypatch, tmp_path)
    with pytest.warns(RuntimeWarning) as caught:
        auto = _updates(None)
    notes = [str(w.message) for w in caught if "native CPU kernel" in str(w.message)]
    assert len(notes) == 1, notes
    assert expected in notes[0] and "uses the XLA path" in notes[0] and "\n" not in notes[0]
    assert not sfw_mod.uses_cpu_kernel(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # once per process: no second one
        sfw(0.1, {"w": KSparsePolytope(3, 1.0)})
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(_xla_updates())):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.max(jnp.abs(auto[0]["w"]))) > 1e-3      # the steps did move
    with pytest.raises(native.NativeKernelError) as err:
        sfw(0.1, {"w": KSparsePolytope(3, 1.0)}, cpu_kernel=True)
    assert expected in str(err.value)


def test_unwritable_cache_falls_back(monkeypatch, tmp_path):
    """A cache folder that cannot be made (its parent is a file): a failed build, not an
    OSError out of ``sfw``."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    fresh_native_kernel(monkeypatch, blocker / "cache")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(native, "_compiler", lambda: "c++")
    with pytest.warns(RuntimeWarning, match=f"building the native kernel into "
                                            f"{os.fspath(blocker / 'cache')} failed"):
        assert not sfw_mod.uses_cpu_kernel(None)
