"""One math thread per serving process: faiss's OpenMP and numpy's OpenBLAS.

An agent runs many recommendations at once on a machine it shares, and both libraries default to
one thread per core that spin-wait for each other: on the busy 2-core machine a 10k-video faiss
search took 26 ms instead of 0.9 ms, and numpy's 2000 x 128 matrix-vector product in the fresh
source 3.3 ms instead of 0.03 ms (measured, docs/serving.md). ``threadpoolctl`` is the library
for the numpy half but is not a dependency; numpy's bundled OpenBLAS exports its setter, which
is what ``threadpoolctl`` calls too.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)
_SETTERS = ("openblas_set_num_threads64_", "openblas_set_num_threads",
            "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")


def single_threaded_math() -> int:
    """Set faiss (OpenMP) and numpy's OpenBLAS to one thread; returns how many BLAS libraries
    were set (0 where numpy has none bundled, e.g. a system BLAS: set OPENBLAS_NUM_THREADS=1)."""
    faiss.omp_set_num_threads(1)
    done = 0
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(libs.glob("lib*blas*.so*")) if libs.is_dir() else []:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(1)
                done += 1
                break
    if not done:
        log.debug("numpy's BLAS threads not set (no bundled OpenBLAS found)")
    return done
