"""Hand-written C kernels for the CPU (``cd_binary.c``: CD-k's chain and gradient for a Bernoulli RBM on
0/1 data), compiled at first use with the system compiler into a cached shared library, called through ctypes.

``cd_binary()`` returns them, or ``None`` (after one logged warning) where there is no compiler or the build
fails. The library lives under ``$RBM_CORE_CACHE`` (default ``~/.cache/rbm_core``), named by a hash of the
sources, flags, compiler version and CPU, and is written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

_log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("cd_binary.c", "cd_binary_impl.h")
# OpenMP first; a compiler without it (Apple clang) still builds a one-thread library, and one without
# -march=native a portable one (the AVX blocks fall back to plain loops)
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-std=gnu11", "-shared", "-fPIC"),
    ("-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC"),
    ("-O3", "-std=gnu11", "-shared", "-fPIC"),
)

# rbm_cd_chain's ways of summing a layer's weight rows (cd_binary.c): as they are, by Four-Russians
# tables of groups of four rows, or whichever costs fewer row sums (the default)
TABLES_NEVER, TABLES_ALWAYS, TABLES_BY_COST = 0, 1, 2

_lock = threading.Lock()
_loaded: dict[str, CDBinary | None] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("RBM_CORE_CACHE") or Path.home() / ".cache" / "rbm_core")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_model() -> str:
    """The CPU's model and feature flags (``-march=native`` code is only valid on the same CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor() + platform.machine()


def _build(name: str, compiler: str, flags: tuple[str, ...]) -> Path:
    """The cached library built from ``SOURCES`` with ``flags``, compiling it if absent."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256()
    for part in (*(SOURCE_DIR.joinpath(s).read_bytes() for s in SOURCES), " ".join(flags).encode(),
                 version.encode(), _cpu_model().encode()):
        digest.update(part)
        digest.update(b"\0")
    directory = cache_dir()
    target = directory / f"{name}-{digest.hexdigest()[:20]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        command = [compiler, *flags, "-o", temporary, str(SOURCE_DIR / f"{name}.c"), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(temporary, target)  # atomic: another process sees no file or a whole one
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _load(name: str) -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    errors = []
    for flags in FLAG_SETS:
        try:
            return ctypes.CDLL(str(_build(name, compiler, flags)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            errors.append(str(error))
    raise RuntimeError("\n".join(errors))


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class CDBinary:
    """The functions of ``cd_binary.c`` for float32 and float64 tensors (contiguous, on the CPU;
    the caller checks). Shapes as in the C source: ``data`` / ``visible`` ``(batch, V)``, ``weight``
    ``(V, H)``, hidden arrays ``(batch, H)``."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, u64, ptr, c_int = ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int
        self._functions: dict[torch.dtype, dict[str, ctypes._CFuncPtr]] = {}
        for dtype, suffix in ((torch.float32, "_f32"), (torch.float64, "_f64")):
            functions = {}
            for base, restype, argtypes in (
                ("rbm_count_binary", i64, [ptr, i64]),
                ("rbm_uniforms", None, [u64, u64, i64, ptr]),
                ("rbm_cd_chain", c_int, [i64, i64, i64, i64, ptr, ptr, ptr, ptr, u64, ptr, ptr, ptr, ptr, ptr, ptr, c_int, c_int]),
                ("rbm_cd_gradient", c_int, [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, c_int]),
            ):
                function = getattr(library, base + suffix)
                function.restype = restype
                function.argtypes = argtypes
                functions[base] = function
            self._functions[dtype] = functions

    def count_binary(self, x: Tensor) -> int | None:
        """The number of ones of ``x``, or None if some entry is neither exactly 0 nor exactly 1."""
        count = self._functions[x.dtype]["rbm_count_binary"](x.data_ptr(), x.numel())
        return None if count < 0 else count

    def uniforms(self, key: int, first: int, count: int, dtype: torch.dtype) -> Tensor:
        """The uniforms number ``first`` .. ``first + count - 1`` of the chain run with ``key``."""
        out = torch.empty(count, dtype=dtype)
        self._functions[dtype]["rbm_uniforms"](key, first, count, out.data_ptr())
        return out

    def chain(
        self,
        weight: Tensor,
        visible_bias: Tensor,
        hidden_bias: Tensor,
        data: Tensor,
        num_steps: int,
        key: int,
        uniforms: Tensor | None,
        out: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
        num_threads: int,
        tables: int = TABLES_BY_COST,
    ) -> None:
        """CD-k's chain; ``out`` = (visible, hidden, visible_mean, hidden_mean, positive_hidden).
        ``tables`` forces how each layer sums rows (``TABLES_NEVER`` / ``TABLES_ALWAYS``, for tests)."""
        (batch, num_visible), num_hidden = data.shape, weight.shape[1]
        status = self._functions[weight.dtype]["rbm_cd_chain"](
            batch, num_visible, num_hidden, num_steps, weight.data_ptr(), visible_bias.data_ptr(),
            hidden_bias.data_ptr(), data.data_ptr(), key, _pointer(uniforms), *(t.data_ptr() for t in out),
            tables, num_threads,
        )  # fmt: skip
        if status != 0:
            raise MemoryError("rbm_cd_chain could not allocate its work space")

    def gradient(
        self,
        data: Tensor,
        data_hidden: Tensor,
        visible: Tensor,
        visible_hidden: Tensor,
        grads: tuple[Tensor, Tensor, Tensor],
        num_threads: int,
    ) -> None:
        """The CD gradient into ``grads`` = (weight, visible bias, hidden bias) buffers."""
        (batch, num_visible), num_hidden = data.shape, data_hidden.shape[1]
        status = self._functions[data.dtype]["rbm_cd_gradient"](
            batch, num_visible, num_hidden, data.data_ptr(), data_hidden.data_ptr(), visible.data_ptr(),
            visible_hidden.data_ptr(), *(g.data_ptr() for g in grads), num_threads,
        )  # fmt: skip
        if status != 0:
            raise MemoryError("rbm_cd_gradient could not allocate its work space")


def cd_binary() -> CDBinary | None:
    """The CD kernels, built and loaded at the first call; None (one warning logged) where they
    cannot be."""
    try:
        return _loaded["cd_binary"]
    except KeyError:
        pass
    with _lock:
        if "cd_binary" not in _loaded:
            try:
                _loaded["cd_binary"] = CDBinary(_load("cd_binary"))
            except Exception as error:  # any failure leaves the NumPy/torch path in charge
                _log.warning("rbm_core: the C kernel cd_binary is unavailable, using the NumPy/torch path: %s", error)
                _loaded["cd_binary"] = None
        return _loaded["cd_binary"]
