"""Memory: the peak a call reached (expansion.json and diagnosis.json report it), and the free memory of a
device (distillation sizes its kept key/value caches by it).

Peak resident memory (RSS) of this process: on Linux the high-water mark is reset at the start of the call
(writing "5" to /proc/self/clear_refs) and read from VmHWM in /proc/self/status at its end. Where the reset is
not permitted or does not take (the mark stays above the current RSS), or elsewhere (getrusage), the figure is
the process's peak since it started, and says so ("rss_scope": "process"). GPU memory: torch's peak allocated
bytes over the call, read only where CUDA is already initialized, so that a CPU-only run never initializes it.

Left out: memory of other processes or of the GPU outside torch's allocator; what to do with the figures.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch

MB = 2**20


class _Watch:
    """One open measurement: the peaks seen before a nested measurement reset the marks."""

    def __init__(self) -> None:
        self.rss_peak, self.cuda_peak = 0, 0
        self.rss_scope = "call" if _reset_rss_peak() else "process"

    def fold(self) -> None:
        """Keep the marks reached so far (a nested measurement is about to reset them)."""
        self.rss_peak = max(self.rss_peak, _rss_peak_bytes())
        self.cuda_peak = max(self.cuda_peak, _cuda_peak_bytes())


_OPEN: list[_Watch] = []  # measurements under way, outermost first


@contextmanager
def peak_memory() -> Iterator[dict[str, Any]]:
    """A dict filled in when the block ends: {"rss_mb": peak resident memory of this process in MB,
    "rss_scope": "call" or "process" (a peak since the process started, where it cannot be reset)} and, when
    CUDA is initialized, "cuda_mb": peak memory allocated by torch during the block, summed over GPUs.
    Measurements nest: an outer one still sees the peak of an inner one.

    Example: ``with peak_memory() as peak: expand(...)`` then ``peak["rss_mb"]`` is e.g. 812.4."""
    for outer in _OPEN:
        outer.fold()
    _reset_cuda_peak()
    watch = _Watch()
    _OPEN.append(watch)
    figures: dict[str, Any] = {}
    try:
        yield figures
    finally:
        _OPEN.remove(watch)
        watch.fold()
        for outer in _OPEN:  # the kernel's mark can read lower later (it is updated lazily), so pass it on
            outer.rss_peak, outer.cuda_peak = max(outer.rss_peak, watch.rss_peak), max(outer.cuda_peak, watch.cuda_peak)
        figures.update({"rss_mb": watch.rss_peak / MB, "rss_scope": watch.rss_scope})
        if torch.cuda.is_initialized():
            figures["cuda_mb"] = watch.cuda_peak / MB


RESET_SLACK = 4 * MB  # the kernel's RSS counters may lag this much behind the high-water mark


def _reset_rss_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux); False where that is not possible, including
    where the write is taken but ignored (some sandboxes): the mark must then read the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    peak, now = _proc_bytes("/proc/self/status", "VmHWM:"), _proc_bytes("/proc/self/status", "VmRSS:")
    return peak is not None and now is not None and peak <= now + RESET_SLACK


def _proc_bytes(path: str, field: str) -> int | None:
    """A "FIELD: N kB" line of a /proc file, in bytes; None off Linux. E.g. ("/proc/meminfo", "MemAvailable:")."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_peak_bytes() -> int:
    """Peak RSS in bytes: VmHWM (Linux, resettable), else getrusage's maximum (the process's lifetime)."""
    peak = _proc_bytes("/proc/self/status", "VmHWM:")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _cuda_devices() -> range:
    """The GPUs torch has set up; none (and no initialization) on a CPU-only run."""
    return range(torch.cuda.device_count()) if torch.cuda.is_initialized() else range(0)


def _reset_cuda_peak() -> None:
    for device in _cuda_devices():
        torch.cuda.reset_peak_memory_stats(device)


def _cuda_peak_bytes() -> int:
    return sum(torch.cuda.max_memory_allocated(device) for device in _cuda_devices())


def available_bytes(device: torch.device) -> int | None:
    """Memory that ``device`` can still give, in bytes: free GPU memory plus what torch holds unused (CUDA), or
    the system's available memory (MemAvailable; psutil off Linux). None where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = _proc_bytes("/proc/meminfo", "MemAvailable:")
    if available is not None:
        return available
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes held by ``tensors`` (None skipped). Example: one float32 [2, 3] tensor -> 24."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)

