"""The native CPU decode step (native_step.cpp): built on first use, optional.

On CPU at small shapes a decode step costs its op count, not its arithmetic: the
torch step runs ~15 ops per layer of a few microseconds each, and each op pays Python,
dispatch and an OpenMP fork-join. native_step.cpp runs the layer stack in one call,
with ATen's matmuls, plain loops for the rest, and the rows split across the intra-op
threads (one fork-join per step). It is compiled with torch.utils.cpp_extension the
first time a CPU engine needs it (about 30-40 s on 2 cores; cached under
TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions, and shared by the processes of
a node through torch's build lock). Where it cannot be built (no C++ compiler, or
COMBINER_NATIVE_STEP=0) the engine runs the torch step and logs why once.

No Ray here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .activations import gelu_tanh

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("native_step.cpp")
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}

# Activation codes of native_step.cpp's Act enum.
_GELU, _GELU_TANH, _RELU, _SILU = 0, 1, 2, 3


def _arch_flags() -> list[str]:
    """Vector flags for the instructions this CPU has (torch's own dispatch level).
    The build is named after them, so a cache shared by different CPUs never loads a
    build for instructions the machine lacks."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        return ["-mavx2", "-mfma"]
    return []


def load_native() -> Any | None:
    """The compiled module, or None (the reason is logged once and kept in `native_error()`)."""
    with _LOCK:
        if "module" in _STATE or "error" in _STATE:
            return _STATE.get("module")
        if os.environ.get("COMBINER_NATIVE_STEP", "1") == "0":
            _STATE["error"] = "COMBINER_NATIVE_STEP=0"
        else:
            try:
                # torch's own flags: without errno and traps, GCC vectorizes the attention
                # loops (floor, the reductions); with them a beam step took 1.5x as long.
                flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", *_arch_flags()]
                source = _SOURCE.read_bytes()
                digest = hashlib.sha256(source + " ".join(flags).encode() + torch.__version__.encode()).hexdigest()[:12]
                name = f"combiner_native_step_{digest}"
                _STATE["module"] = _import_built(name) or _build(name, flags)
            except Exception as exc:  # no compiler, no ninja, a failed build: the torch step serves
                _STATE["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        if "error" in _STATE:
            log.warning(
                "generation engine: native CPU decode step unavailable (%s); running the torch step "
                "(same outputs, slower at small shapes)",
                _STATE["error"],
            )
        return _STATE.get("module")


def _import_built(name: str) -> Any | None:
    """The module from an earlier build, imported directly: the name carries the hash of
    the source, flags and torch version, so an existing library is this build. (torch's
    load() re-runs ninja to check, 2.5 s of every actor's start.)"""
    from torch.utils import cpp_extension

    path = Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"
    if not path.exists():
        return None
    try:
        desc = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(desc)
        desc.loader.exec_module(module)
        return module
    except ImportError:  # a half-written library from an interrupted build: rebuild it
        return None


def _build(name: str, flags: list[str]) -> Any:
    from torch.utils import cpp_extension

    # torch runs the ninja binary from PATH; pip's ninja package puts it beside this
    # interpreter, which is not on PATH when .venv/bin/python is run by its path.
    here = Path(sys.executable).parent
    if shutil.which("ninja") is None and (here / "ninja").exists():
        os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"
    return cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)


def native_error() -> str | None:
    """Why load_native() returned None, if it did."""
    return _STATE.get("error")


def act_code(act: Any) -> int | None:
    """native_step.cpp's code for a LayerWeights activation, or None when it has none."""
    if act is gelu_tanh:
        return _GELU_TANH
    if act is F.gelu:
        return _GELU
    if isinstance(act, functools.partial) and act.func is F.gelu and not act.args:
        approximate = act.keywords.get("approximate", "none")
        return {"none": _GELU, "tanh": _GELU_TANH}.get(approximate) if set(act.keywords) <= {"approximate"} else None
    if act is F.relu or isinstance(act, torch.nn.ReLU):
        return _RELU
    if act is F.silu or isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation":
        return _SILU
    return None
