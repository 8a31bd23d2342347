"""Peak memory of one method call: CUDA allocations on a GPU, resident memory (Linux) on the CPU.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` during the call (tensors on the device: the method's
weights and its activations). On the CPU it is the process's peak resident set size during the call (``VmHWM`` of
``/proc/self/status``, reset before the call through ``/proc/self/clear_refs``) less the resident size at the start
of the call, plus the growth of the resident size while the method loaded: its weights plus its working memory,
approximately, since the allocator may keep memory freed earlier. Elsewhere (macOS, Windows, MPS) nothing is
measured and the peak is ``None``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` in bytes."""
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{field} not in {PROC_STATUS}")


def _can_reset_peak_rss() -> bool:
    try:
        PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
        _status_bytes("VmHWM")
    except (OSError, KeyError):
        return False
    return True


@dataclass
class Measurement:
    """Filled in when the measured block ends."""

    seconds: float = 0.0
    peak_bytes: int | None = None


class MemoryMeter:
    """Measures the time and peak memory of calls on ``device``; load each method inside :meth:`loading`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.weights_bytes = 0
        if device.type == "cuda":
            self.kind = "cuda_max_memory_allocated"
        elif device.type == "cpu" and _can_reset_peak_rss():
            self.kind = "cpu_peak_rss_during_call_plus_weights"
        else:
            self.kind = "not_measured"

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Measure how much resident memory loading a method adds (CPU only; on CUDA weights count anyway)."""
        if self.kind != "cpu_peak_rss_during_call_plus_weights":
            yield
            return
        before = _status_bytes("VmRSS")
        yield
        self.weights_bytes = max(0, _status_bytes("VmRSS") - before)

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Time the block and record its peak memory into the yielded :class:`Measurement`."""
        measurement = Measurement()
        start_rss = 0
        if self.kind == "cuda_max_memory_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "cpu_peak_rss_during_call_plus_weights":
            PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
            start_rss = _status_bytes("VmRSS")
        start = time.perf_counter()
        yield measurement
        if self.kind == "cuda_max_memory_allocated":
            torch.cuda.synchronize(self.device)
            measurement.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.kind == "cpu_peak_rss_during_call_plus_weights":
            measurement.peak_bytes = max(0, _status_bytes("VmHWM") - start_rss) + self.weights_bytes
        measurement.seconds = time.perf_counter() - start
