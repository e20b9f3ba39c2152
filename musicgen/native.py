"""Our C++ decode kernels (`csrc/*.cpp`), built on first use.

A decode step of musicgen-small runs ~150 int8 linears and 48 attentions on a few rows each, each of them
~10 small torch ops. The kernels do each in one call: the batch-invariant row-wise int8 linear
(layout.DynamicInt8Linear, bit for bit: our own AVX512-VNNI kernel on weights stored in its order, or fbgemm's
GEMM on other x86 CPUs) and the step's self- and cross-attention (lm.py; SDPA's result within float32 rounding,
on a float32 or bfloat16 cache). tests/test_native.py checks them against the torch code.
They are compiled here with torch's extension builder (g++ and ninja, ~10 s once; cached under
TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions). Where that is not possible (no compiler, not
x86 with AVX2, `MUSICGEN_NATIVE=0`), `load()` says why once and the torch ops run: same results, slower.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = tuple(str(Path(__file__).parent / "csrc" / name)
                for name in ("attention.cpp", "int8_linear.cpp", "decode_layer.cpp"))
NAME = "musicgen_native"  # torch's builder rebuilds (as NAME_v1, ...) when the source or the flags change
# AVX2, as fbgemm itself needs; exact IEEE division and rounding (no -ffast-math), so the int8 results equal torch's;
# OpenMP for csrc/parallel.h (its symbols resolve to torch's own libgomp, already loaded: one thread pool)
FLAGS = ("-O3", "-mavx2", "-mfma", "-fno-math-errno", "-fopenmp")
ENV = "MUSICGEN_NATIVE"  # "0": never build or use it
STALE_LOCK_S = 600  # a build takes ~10 s: a lock file this old was left by a killed build, and torch would wait on it


SWITCHES = ("native", "vnni", "reduce_range")  # module attributes that choose a kernel (see KernelSwitches)
generation = 0  # bumped whenever one of them is set on any module (KernelSwitches): fused.py's cached arguments follow


class KernelSwitches:
    """Mixin (before nn.Module) for modules with SWITCHES: setting one bumps `generation`."""

    def __setattr__(self, name: str, value: object) -> None:
        global generation
        if name in SWITCHES:
            generation += 1
        super().__setattr__(name, value)


def slot_valid(mask: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """lm.self_attn_mask's [B or 1, 1, 1, n] mask of a decode step -> the [rows, n] rows decode_attention takes."""
    return None if mask is None else mask.reshape(mask.shape[0], -1).expand(rows, -1)


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH: the pip package's binary (requirements.txt) when none is there."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def build_folder() -> Path:
    """Where the kernel is built and cached: under TORCH_EXTENSIONS_DIR as torch's builder would, by name."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / NAME


def _clear_stale_lock(folder: Path) -> None:
    """torch's builder waits for as long as a `lock` file exists: one left by a killed build would hang us."""
    lock = folder / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
            log.warning("musicgen: removed a stale build lock %s", lock)
    except OSError:
        pass


def why_not() -> str | None:
    """Why the kernel cannot be used here (None: it can be tried)."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"needs an x86 CPU with AVX2 (this one: {torch.backends.cpu.get_cpu_capability()})"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (install g++)"
    return None


@functools.cache
def load() -> bool:
    """Build (once per machine) and load the kernel; False, with one log line saying why, where it cannot."""
    reason = why_not()
    if reason is None:
        _ninja_on_path()
        try:  # (its import warns about CUDA_HOME on machines without CUDA: not our concern on a CPU)
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils.cpp_extension import load as build

            folder = build_folder()
            folder.mkdir(parents=True, exist_ok=True)
            _clear_stale_lock(folder)
            build(name=NAME, sources=list(SOURCES), extra_cflags=list(FLAGS), build_directory=str(folder),
                  is_python_module=False, verbose=False)
            return True
        except Exception as e:  # a failed build must not stop the engine: the Python path is exact too
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    log.warning("musicgen: the C++ decode kernels are not used (%s); torch ops run instead, ~20 %% slower", reason)
    return False


@functools.cache
def vnni() -> bool:
    """Our int8 kernel can run: the kernels are built and the CPU has AVX512-VNNI (asked of the CPU itself)."""
    return load() and bool(torch.ops.musicgen_native.vnni_supported())


def vnni_pack(w: torch.Tensor) -> torch.Tensor:
    """int8 weights [N, K] -> [ceil(N / 64), ceil(K / 4), 64, 4], the order vnni_int8_linear reads them in."""
    return torch.ops.musicgen_native.vnni_pack(w)


def vnni_unpack(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """vnni_pack's inverse: -> int8 [N, K]."""
    return packed.permute(0, 2, 1, 3).reshape(packed.shape[0] * packed.shape[2], -1)[:N, :K]


def vnni_int8_linear(x: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor, wscale: torch.Tensor, half: int,
                     mid: int) -> torch.Tensor:
    """x [..., in] -> [..., out]: rowwise_int8_linear's result, by our kernel on vnni_pack's weights, colsum [out]
    int32 (each output's sum of weights), wscale [out] float32."""
    return torch.ops.musicgen_native.vnni_int8_linear(x, packed, colsum, wscale, half, mid)


def rowwise_int8_linear(x: torch.Tensor, packed: object, half: int, mid: int) -> torch.Tensor:
    """x [..., in] -> [..., out]: every row quantized on its own, fbgemm's exact int32 sums, rescaled."""
    return torch.ops.musicgen_native.rowwise_int8_linear(x, packed, half, mid)


def decode_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """One decode step's self-attention: qkv [B, 1, 3D] -> [B, 1, D]; writes the new keys / values at slot `pos`
    of the caches [B, H, T_max, hd] (float32 or bfloat16) and attends to the slots 0..pos that `valid`
    [B, >= pos + 1] (bool; None: all) allows."""
    return torch.ops.musicgen_native.decode_attention(qkv, k_cache, v_cache, pos, valid)


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """One decode step's cross-attention: q [B, 1, D] against the text's k, v [B, H, L, hd] (float32), `valid`
    [B, L] (bool: False on text padding; a row with none valid gets uniform weights, as under torch's
    finfo.min bias) -> [B, 1, D]."""
    return torch.ops.musicgen_native.cross_attention(q, k, v, valid)


def decode_layer(x: torch.Tensor, norms: list[torch.Tensor], linears: list[torch.Tensor], half: int, mid: int,
                 eps: float, bounds: list[int], pos: list[int], k: list[torch.Tensor], v: list[torch.Tensor],
                 valids: list[torch.Tensor | None], text_k: list[torch.Tensor], text_v: list[torch.Tensor],
                 text_valids: list[torch.Tensor]) -> torch.Tensor:
    """One decoder layer of a decode step (lm.Layer.decode's ops, fused.py): x [R, 1, D], the groups' rows at
    `bounds`, their slots `pos`, caches, masks and texts -> [R, 1, D]."""
    return torch.ops.musicgen_native.decode_layer(x, norms, linears, half, mid, eps, bounds, pos, k, v, valids,
                                                  text_k, text_v, text_valids)


def attention_usable(qkv: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """float32 queries on the CPU, a float32 or bfloat16 cache contiguous per (row, head), and the kernel built."""
    return (qkv.device.type == "cpu" and qkv.dtype == torch.float32 and qkv.is_contiguous()
            and k_cache.dtype in (torch.float32, torch.bfloat16)
            and k_cache.stride(-1) == 1 and k_cache.stride(-2) == k_cache.shape[-1] and load())
