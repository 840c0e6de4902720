"""One line naming the machine a figure was measured on: CPU, its vector instructions, threads, GPU, torch."""
import os
import platform

import torch

from helper.captioning.steps import autocast_dtype


def cpu_instructions() -> str:
    """
    The CPU's vector instructions that decide what mixed precision gains here
    (figures from a CPU with AVX2 alone and one with AMX differ several-fold).

    Returns:
    - e.g. "AVX2", "AVX-512 with bfloat16", "AVX-512 with bfloat16 and AMX"
    """
    def has(name: str) -> bool:
        check = getattr(torch.cpu, name, None)  # private checks: absent in some builds
        return bool(check()) if check is not None else False

    if not has("_is_avx512_supported"):
        return "AVX2" if has("_is_avx2_supported") else "no AVX2"
    extras = [name for check, name in (("_is_avx512_bf16_supported", "bfloat16"), ("_is_amx_tile_supported", "AMX"))
              if has(check)]
    return "AVX-512" + (" with " + " and ".join(extras) if extras else "")


def machine_description() -> str:
    """One line naming the machine, for the figures in the README."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    kernels = "bfloat16 kernels" if autocast_dtype(torch.device("cpu")) is not None else "no bfloat16 kernels"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} ({cpu_instructions()}{kernel_limits()}; {kernels}), {torch.get_num_threads()} threads, "
            f"{device}, torch {torch.__version__}")


def kernel_limits() -> str:
    """
    The instruction sets PyTorch, oneDNN and MKL were limited to, when they
    were (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    MKL_ENABLE_INSTRUCTIONS=AVX2 runs an AVX-512 machine with the kernels of
    an AVX2-only one, as most laptops have).

    Returns:
    - e.g. ", kernels limited to AVX2 and oneDNN AVX2 and MKL AVX2", or ""
      when not limited
    """
    limits = []
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        limits.append(torch.backends.cpu.get_cpu_capability())
    for variable, library in (("ONEDNN_MAX_CPU_ISA", "oneDNN"), ("MKL_ENABLE_INSTRUCTIONS", "MKL")):
        if os.environ.get(variable):
            limits.append(f"{library} {os.environ[variable]}")
    return f", kernels limited to {' and '.join(limits)}" if limits else ""
