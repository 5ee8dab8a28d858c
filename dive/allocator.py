"""Keep freed CPU memory in the process, so that training steps stop paying for page faults.

PyTorch has no caching allocator on CPU: every tensor comes from malloc and
goes back to it. glibc hands large blocks back to the kernel (``munmap``, or
trimming the top of the heap) as soon as they are freed, so the next step's
tensors of the same sizes are fresh pages, and every 4 KiB page is zeroed
and mapped again on first touch. A training step of the s3 model at batch 64
took some 50,000 such faults (about 200 MiB) per step; on a virtual machine,
where a fault can also exit to the hypervisor, that is a measurable part of
the step (docs/studies/speed-round-first-amd-epyc.md).

`retain_freed_memory` tells glibc to serve every block from the heap (no
``mmap`` per block) and to trim the heap only when more than 2 GiB of it is
free, so freed memory stays in the process for the next step. The resident
size then stays near its peak instead of breathing with every step. It is a
process-wide setting: call it once, early, in the process that trains.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int, so 2 GiB is as high as it goes


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse. True if applied; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    no_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and no_mmap
