"""Native CPU kernel for the front half of the SFW step on K-sparse float32 leaves.

``sfw(...)`` on a CPU backend (``cpu_kernel=None``, the default, wherever the kernel builds and
loads; ``cpu_kernel=True`` to insist) replaces, for every float32 leaf with a
:class:`KSparsePolytope` constraint with K < n, the XLA ops that compute

    m = mu m_prev + (1 - mu) g   (m = g at count 0),   the top-k selection (t, cut) of |m|,
    ||m||^2   and   ||v - x||^2   (v = LMO(m))

by one call to a C++ kernel (``sfw_jax/_native/sfw_cpu.cc``, an XLA FFI custom call) that makes
one pass over ``g, m_prev, x``: it writes ``m`` and sums ``m^2``, and, with a key bracket for
the k-th largest ``|m|`` read off a strided sample of ``m``, sums ``(v - x)^2`` for the entries
above the bracket and ``x^2`` for those below it, copying the few inside aside; the k-th
largest of those gives the exact selection (a second pass only if the bracket missed). The
pass is split over XLA's intra-op thread pool (AVX-512 where the CPU has it). The update
``x + eta (v - x)`` stays an XLA loop (fused into ``optax.apply_updates``).

``m`` and the selection are bitwise those of the XLA path (the same float32 arithmetic, one
fma where XLA:CPU contracts one, denormals flushed as XLA:CPU flushes them); the two squared
norms are summed in 16 lanes of float32 blocks flushed into float64 instead
of XLA's float32 reduction order, so the step size ``eta`` can differ in its last bits and a
long training run is not bitwise the XLA path's run. The kernel's own sums have a fixed order
(16 lanes, 64 float32 terms per lane between float64 flushes, fixed parts), independent of the
number of threads.

The kernel is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``,
``g++`` or ``clang++``; ``-O3 -march=native``) into ``$SFW_JAX_CACHE`` (default
``~/.cache/sfw_jax``), keyed by the source, the jaxlib version and the CPU's flags, and
registered with ``jax.ffi``. x86-64 only (the flush-to-zero mode that keeps ``m`` bitwise equal
to XLA's is set through MXCSR). :func:`unavailable_reason` tries this once per process for
``cpu_kernel=None`` and, wherever it fails (a jax without ``jax.ffi``, no compiler, another
CPU, a failed build, load or registration), warns once: ``sfw`` then takes the XLA path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "TARGET", "NativeKernelError", "build", "ensure_registered", "unavailable_reason",
    "sfw_select_f32",
]


TARGET = "sfw_jax_sfw_select_f32"
_FFI_API = ("ffi_call", "include_dir", "pycapsule", "register_ffi_target")
_SOURCE = Path(__file__).with_name("_native") / "sfw_cpu.cc"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off",
          "-fno-fast-math")


class NativeKernelError(RuntimeError):
    """The native CPU kernel cannot be built or loaded here."""


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise NativeKernelError("the native kernel needs a C++ compiler: none of $CXX, c++, g++, "
                            "clang++ is on PATH (install one, or use cpu_kernel=False)")


def _cache_dir() -> Path:
    return Path(os.environ.get("SFW_JAX_CACHE", Path.home() / ".cache" / "sfw_jax"))


def _cpu_flags() -> str:
    """The CPU's feature flags (the library is built with -march=native)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((ln for ln in text.splitlines() if ln.startswith("flags")), "")


def _check_jax_api() -> None:
    """:class:`NativeKernelError` unless this jax has the ``jax.ffi`` functions the kernel uses."""
    ffi = getattr(jax, "ffi", None)
    missing = [f"jax.ffi.{name}" for name in _FFI_API if not hasattr(ffi, name)]
    if missing:
        raise NativeKernelError(f"the native kernel needs {', '.join(missing)}, which jax "
                                f"{jax.__version__} does not have")


def build() -> Path:
    """Compile the kernel (if not cached) and return the shared library's path."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise NativeKernelError(f"the native kernel supports x86-64 CPUs only, this machine is "
                                f"{platform.machine()!r}")
    _check_jax_api()
    import jaxlib
    try:
        src = _SOURCE.read_bytes()
    except OSError as e:                      # an install without package data
        raise NativeKernelError(f"the native kernel's source is missing: {e}") from e
    key = hashlib.sha256(src + jaxlib.__version__.encode() + " ".join(_FLAGS).encode()
                         + _cpu_flags().encode())
    out = _cache_dir() / f"sfw_cpu_{key.hexdigest()[:16]}.so"
    if out.exists():
        return out
    cxx = _compiler()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            so = Path(tmp) / out.name
            cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(so)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise NativeKernelError(f"compiling {_SOURCE} failed ({' '.join(cmd)}):\n"
                                        f"{proc.stderr[-4000:]}")
            os.replace(so, out)               # atomic: concurrent builders agree on the file
    except OSError as e:                      # an unwritable cache, a compiler that won't start
        raise NativeKernelError(f"building the native kernel into {out.parent} failed: "
                                f"{e}") from e
    return out


@functools.lru_cache(maxsize=None)
def ensure_registered() -> None:
    """Build, load and register the kernel with ``jax.ffi`` (once per process);
    :class:`NativeKernelError` where it cannot."""
    path = build()
    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
        handler = lib.SfwSelectF32
    except (OSError, AttributeError) as e:    # not a loadable library, or no such symbol
        raise NativeKernelError(f"loading {path} failed: {e}") from e
    try:
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
    except Exception as e:                    # whatever this jaxlib raises for a bad target
        raise NativeKernelError(f"registering {TARGET} with jax.ffi failed: {e}") from e


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None where the kernel builds, loads and registers here; otherwise the first line of the
    reason, after one ``RuntimeWarning`` naming it (tried, and warned, once per process). The
    check behind ``cpu_kernel=None``."""
    try:
        ensure_registered()
    except NativeKernelError as e:
        reason = str(e).splitlines()[0]
        warnings.warn(f"sfw_jax: the native CPU kernel is unavailable ({reason}); "
                      f"sfw(cpu_kernel=None) uses the XLA path", RuntimeWarning, stacklevel=2)
        return reason
    return None


def sfw_select_f32(g: jax.Array, m_prev: jax.Array, x: jax.Array, count: jax.Array,
                   mu: jax.Array, k: int, radius: float):
    """``(m, (t, cut), sq_m, sq_d)`` for one float32 leaf (module docstring); CPU only.

    Shapes: ``g, m_prev, x`` any common shape with n entries, ``1 <= k <= n`` static; ``m`` has
    that shape, ``t`` float32 and ``cut`` int32 scalars in the format of
    :func:`sfw_jax.fw.topk.top_k_threshold` (``absolute=True``), ``sq_m, sq_d`` float32 scalars.
    """
    ensure_registered()
    f32 = jnp.float32
    call = jax.ffi.ffi_call(
        TARGET,
        (jax.ShapeDtypeStruct(g.shape, f32), jax.ShapeDtypeStruct((), f32),
         jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((2,), f32)),
        input_output_aliases={1: 0}, vmap_method="sequential")
    m, t, cut, sq = call(g.astype(f32), m_prev.astype(f32), x.astype(f32),
                         jnp.asarray(count, jnp.int32), jnp.asarray(mu, f32),
                         k=np.int64(k), radius=np.float32(radius))
    return m, (t, cut), sq[0], sq[1]
