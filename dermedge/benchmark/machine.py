"""Facts about the machine a benchmark ran on: CPU, instruction-set flags, memory, load, versions
(and whether a module is installed here)."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

# /proc/cpuinfo flags that decide which kernels XNNPACK / ONNX Runtime / TensorFlow can use.
X86_FLAGS = (
    "sse4_2",
    "avx",
    "fma",
    "f16c",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
)
ARM_FLAGS = ("asimd", "asimddp", "fphp", "asimdhp", "i8mm", "sve", "sme")
PACKAGES = (
    "dermedge",
    "numpy",
    "ai-edge-litert",
    "tflite-runtime",
    "tensorflow",
    "keras",
    "onnxruntime",
    "onnx",
    "tf2onnx",
    "flatbuffers",
    "opencv-python-headless",
    "pillow",
    "matplotlib",
)


def _cpuinfo() -> dict[str, Any]:
    """The first CPU's /proc/cpuinfo facts (model, flags, MHz, cores, cache) and the CPU count."""
    info: dict[str, Any] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = text.split("\n\n")[0]
    for line in first.splitlines():
        if ":" not in line:
            continue
        key, _, value = (s.strip() for s in line.partition(":"))
        if key in ("model name", "Model") and value:
            info.setdefault("model", value)
        elif key == "Hardware" and value:
            info["hardware"] = value
        elif key in ("flags", "Features"):
            have = set(value.split())
            info["flags"] = {f: f in have for f in (X86_FLAGS if key == "flags" else ARM_FLAGS)}
            info["hypervisor"] = "hypervisor" in have
        elif key == "cpu MHz":
            info["mhz"] = float(value)
        elif key == "cpu cores":
            info["physical_cores_per_socket"] = int(value)
        elif key == "cache size":
            info["cache_size"] = value
    info["logical_cpus"] = text.count("processor\t:") or text.count("processor :")
    return info


def _cache_sizes() -> dict[str, str]:
    """CPU 0's cache sizes from sysfs by level and kind (L1d, L1i, L2, ...); empty elsewhere."""
    out = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            level = (idx / "level").read_text().strip()
            kind = (idx / "type").read_text().strip()
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + ({"Data": "d", "Instruction": "i"}.get(kind, ""))
        out[name] = size
    return out


def _mem_total_gb() -> float | None:
    """Total memory in GiB from /proc/meminfo, or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 2)
    except OSError:
        pass
    return None


def _governor() -> str | None:
    """CPU 0's cpufreq scaling governor (e.g. performance), or None where unknown."""
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return None


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (processes wanting a CPU), or None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str]:
    """The Python version and the version of each installed package of PACKAGES."""
    out = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def missing(module: str) -> bool:
    """True when `module` cannot be imported here (checked without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def facts() -> dict[str, Any]:
    """Everything a reader needs to compare these numbers with their own machine."""
    cpu = _cpuinfo()
    affinity: int | None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu.get("model") or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "physical_cores_per_socket": cpu.get("physical_cores_per_socket"),
        "mhz": cpu.get("mhz"),
        "hypervisor": cpu.get("hypervisor"),
        "flags": cpu.get("flags", {}),
        "caches": _cache_sizes(),
        "mem_total_gb": _mem_total_gb(),
        "governor": _governor(),
        "os": platform.platform(),
        "versions": versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def flag_summary(flags: dict[str, bool]) -> str:
    """E.g. 'AVX2 FMA F16C, no AVX-512, no VNNI'."""
    on = [f.upper() for f in ("avx2", "fma", "f16c") if flags.get(f)]
    avx512 = "AVX-512" if flags.get("avx512f") else "no AVX-512"
    vnni = [
        n for f, n in (("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI")) if flags.get(f)
    ]
    arm = [f.upper() for f in ("asimd", "asimddp", "i8mm") if flags.get(f)]
    if arm:
        return ", ".join(arm)
    parts = on + [avx512] + (vnni or ["no VNNI"])
    if flags.get("amx_int8"):
        parts.append("AMX-INT8")
    return ", ".join(parts)
