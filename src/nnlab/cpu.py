"""What the CPU is and can compute in (standard library only: scripts ask without loading torch)."""

import platform
import subprocess
import sys
from pathlib import Path


def cpuinfo(field: str | tuple[str, ...]) -> str:
    """The first value of `field` in Linux's /proc/cpuinfo (`model name`; `flags` on x86, `Features` on Arm); empty
    elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((ln.partition(":")[2].strip() for ln in lines if ln.startswith(field)), "")


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    """Whether the CPU computes in bf16 natively: AVX512_BF16 or AMX on x86, BF16 on Arm (Apple's M2 and later)."""
    if sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        return out.stdout.strip() == "1"
    return bool(set(cpuinfo(("flags", "Features")).split()) & {"avx512_bf16", "amx_bf16", "bf16"})
