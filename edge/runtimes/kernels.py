"""What the CPU offers int8 inference, and the one switch a process has over it (AMX).

XNNPACK (LiteRT's CPU delegate) picks its int8 kernels from the CPU's features once per process:
on x86-64 the best of AMX tiles, AVX512-VNNI, AVX-VNNI, AVX512 and AVX2; on ARM64 the i8mm or
dot-product NEON instructions. Which one ran changes the int8/float32 speed ratio several-fold
(0.34x on an AMD EPYC with AVX512-VNNI, 0.79x on a Sapphire Rapids where XNNPACK's AMX kernels
are slower than its VNNI ones for small convs), so every report names it.

On Linux, a process may use AMX only after asking the kernel
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``); XNNPACK asks at its first use and
falls back to its VNNI kernels when the kernel refuses. :func:`refuse_amx` makes the kernel
refuse for this process (a seccomp filter on that one request; other system calls are
untouched), which is the only switch short of rebuilding LiteRT: XNNPACK has no option for it.
It must run before the first interpreter of the process and cannot be undone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64
_SYS_SECCOMP = 317  # x86-64
_AUDIT_ARCH_X86_64 = 0xC000003E

_refused = False


@dataclass
class CpuFeatures:
    """The CPU as int8 inference sees it.

    Attributes:
        model: the CPU's name (``model name`` of /proc/cpuinfo, or the ARM part).
        arch: ``x86_64``, ``aarch64``, ...
        flags: the features that matter here, named as /proc/cpuinfo names them.
    """

    model: str
    arch: str
    flags: set[str] = field(default_factory=set)

    @property
    def has_amx(self) -> bool:
        """AMX int8 tiles, as XNNPACK requires them (with AVX512-VNNI and GFNI)."""
        x86 = self.arch in ("x86_64", "AMD64")  # (an emulated ARM reads the host's cpuinfo)
        return x86 and {"amx_int8", "amx_tile", "avx512_vnni", "gfni"} <= self.flags

    def int8_isa(self, amx: bool = True) -> str:
        """The instruction set XNNPACK's int8 convolutions use here (its own order of choice).

        Args:
            amx: whether the process may use AMX (:func:`amx_permitted`).
        """
        f = self.flags
        if self.arch in ("x86_64", "AMD64", "i686", "x86"):
            skx = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= f
            if amx and self.has_amx and skx:
                return "amx-int8"
            if skx and "avx512_vnni" in f:
                return "avx512-vnni" + ("+gfni" if "gfni" in f else "")
            if "avx_vnni" in f and "avx2" in f:
                return "avx-vnni"
            if skx:
                return "avx512"
            return "avx2" if "avx2" in f else "sse4.1"
        if self.arch in ("aarch64", "arm64"):
            if "i8mm" in f:
                return "neon-i8mm"
            return "neon-dotprod" if "asimddp" in f else "neon"
        if self.arch.startswith("arm"):
            return "neon" if "neon" in f else "scalar"
        return "scalar"

    def as_dict(self, amx: bool | None = None) -> dict:
        amx = amx_permitted() if amx is None else amx
        return {
            "model": self.model,
            "arch": self.arch,
            "int8_isa": self.int8_isa(amx),
            "has_amx": self.has_amx,
            "amx_refused": amx_refused(),
            "features": sorted(self.flags),
        }


# The features reported (and used above); everything else in /proc/cpuinfo is left out.
_KNOWN = {
    "avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni", "gfni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "fma",
    "asimd", "asimddp", "i8mm", "sve", "sve2", "sme", "bf16", "fphp", "asimdhp", "neon",
}  # fmt: skip


def cpu_features(cpuinfo: str | None = None, arch: str | None = None) -> CpuFeatures:
    """Read the CPU's name and features (Linux /proc/cpuinfo; the name alone elsewhere).

    Args:
        cpuinfo: the text of /proc/cpuinfo (read from the machine when None).
        arch: the machine architecture (this machine's when None).
    """
    arch = arch or platform.machine() or "unknown"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    names, flags = {}, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split()) & _KNOWN
        elif key in ("model name", "Hardware", "Model", "CPU part"):
            names.setdefault(key, value.strip())
    if "CPU part" in names:
        names["CPU part"] = f"ARM part {names['CPU part']}"
    # the most telling name first: x86's model name, then the board's, then the ARM core's part
    model = next(
        (names[k] for k in ("model name", "Hardware", "Model", "CPU part") if k in names), ""
    )
    return CpuFeatures(model or platform.processor() or "unknown", arch, flags)


def _x86_linux() -> bool:
    return platform.system() == "Linux" and platform.machine() == "x86_64"


def amx_permitted() -> bool:
    """Whether this process holds the kernel's permission for AMX tile data (XNNPACK asks for it
    when it starts; so after the first interpreter, True means its AMX kernels run)."""
    if not _x86_linux():
        return False
    mask = ctypes.c_uint64(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
        return False
    return bool(mask.value & (1 << XFEATURE_XTILEDATA))


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def refuse_amx() -> bool:
    """Make the kernel refuse this process (and its threads and children) AMX tile data.

    Installs a seccomp filter that answers EPERM to ``arch_prctl(ARCH_REQ_XCOMP_PERM, ...)``
    and lets every other system call through. XNNPACK then runs its VNNI kernels. Call it before
    the first interpreter: a process that already holds the permission keeps it. It also sets
    the process's no-new-privileges bit (seccomp requires it): programs it executes cannot gain
    privileges through setuid.

    Returns:
        True when the filter is in place (now or from an earlier call); False where there is
        nothing to refuse (not Linux on x86-64).

    Raises:
        OSError: if the kernel rejects the filter (seccomp unavailable).
    """
    global _refused
    if _refused:
        return True
    if not _x86_linux():
        return False
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    allow, refuse = 0x7FFF0000, 0x00050000 | errno.EPERM
    program = [
        (ld_w_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq_k, 0, 5, _AUDIT_ARCH_X86_64),
        (ld_w_abs, 0, 0, 0),  # seccomp_data.nr
        (jeq_k, 0, 3, _SYS_ARCH_PRCTL),
        (ld_w_abs, 0, 0, 16),  # seccomp_data.args[0], low 32 bits
        (jeq_k, 0, 1, ARCH_REQ_XCOMP_PERM),
        (ret_k, 0, 0, refuse),
        (ret_k, 0, 0, allow),
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    prog = _SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        err = ctypes.get_errno()
        raise OSError(err, f"cannot set no-new-privileges: {os.strerror(err)}")
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, prog): every thread at once
    if libc.syscall(_SYS_SECCOMP, 1, 1, ctypes.byref(prog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"the kernel refused the seccomp filter: {os.strerror(err)}")
    _refused = True
    return True


def amx_refused() -> bool:
    """Whether :func:`refuse_amx` ran in this process."""
    return _refused


def request_amx() -> int:
    """Ask the kernel for AMX tile data as XNNPACK does; returns 0 or the errno (for tests and
    diagnostics: EPERM after :func:`refuse_amx`, EOPNOTSUPP or EINVAL on a CPU without AMX)."""
    if not _x86_linux():
        return errno.EOPNOTSUPP
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0:
        return 0
    return ctypes.get_errno()


__all__ = [
    "CpuFeatures",
    "amx_permitted",
    "amx_refused",
    "cpu_features",
    "refuse_amx",
    "request_amx",
]
