"""Which CPU a bench ran on: its figures only compare with figures from the same kind of CPU.

The 2-core machine this project is measured on has been lent on CPUs with and without AVX-512 VNNI. ONNX Runtime's
int8 MatMuls and torch's fp32 kernels change speed with the instruction set (and int8 vectors change slightly), so
a docs/s figure without the CPU beside it cannot be compared with the next session's.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

# The instruction-set extensions that decide which int8 / bf16 / fp32 kernels ONNX Runtime and oneDNN pick.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


@dataclass(frozen=True)
class Machine:
    cpu: str
    cpus: int
    flags: tuple[str, ...]  # the KERNEL_FLAGS this CPU has

    def summary(self) -> str:
        return f"{self.cpu}, {self.cpus} CPUs, {' '.join(self.flags) or 'no AVX2/AVX-512'}"


def describe(cpuinfo: Path = Path("/proc/cpuinfo")) -> Machine:
    """This machine's CPU; without /proc/cpuinfo (macOS) the platform's processor name and no flags."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return Machine(model, os.cpu_count() or 1, tuple(f for f in KERNEL_FLAGS if f in flags))
