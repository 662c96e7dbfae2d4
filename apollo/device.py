"""Where training runs and in what arithmetic: the device, and float32 or bfloat16.

bfloat16 autocast doubles training speed where the hardware computes in bfloat16 (CUDA GPUs from
Ampere on; CPUs with AVX-512 BF16 or AMX), and on a CPU without it every bfloat16 convolution is
emulated: about 30 times slower than float32 (bench/train.py, docs/training.md). So ``auto``
takes bfloat16 only where the hardware has it, and says what it chose and why.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from apollo.errors import ApolloError

__all__ = ["DEVICES", "PRECISIONS", "resolve_device", "choose_precision", "cpu_has_native_bf16", "use_fast_kernels"]

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below the first with bfloat16 arithmetic.
ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; asking for a missing device is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    if not available.get(name, False):
        raise ApolloError(f"device {name!r} is not available here (try --device cpu)")
    return torch.device(name)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def cpu_has_native_bf16(flags: set[str] | None = None, isa_cap: str | None = None) -> bool:
    """Whether this CPU computes in bfloat16 itself (AVX-512 BF16 or AMX), and oneDNN may use it."""
    flags = cpu_flags() if flags is None else flags
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "") if isa_cap is None else isa_cap
    if isa_cap.upper() in ISAS_WITHOUT_BF16:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(``"fp32"`` or ``"bf16"``, why), for ``requested`` in :data:`PRECISIONS` on ``device``."""
    if requested not in PRECISIONS:
        raise ApolloError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested, "as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} computes in bfloat16"
        return "fp32", f"auto: {torch.cuda.get_device_name(device)} has no native bfloat16"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "auto: this CPU has native bfloat16 (AVX-512 BF16 or AMX)"
        return "fp32", "auto: this CPU has no native bfloat16, where it would be about 30x slower"
    return "fp32", f"auto: bfloat16 is not measured on {device.type}"


def use_fast_kernels(device: torch.device) -> None:
    """On CUDA: let cuDNN pick the fastest kernels for the fixed shapes, and TF32 matmuls."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
