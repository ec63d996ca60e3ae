"""One math thread per serving process: faiss's OpenMP and the BLAS libraries numpy and faiss load.

An agent runs many recommendations at once on a machine it shares, and these libraries default
to one thread per core that spin-wait for each other: on the busy 2-core machine a 10k-video
faiss search took 26 ms instead of 0.9 ms, and numpy's 2000 x 128 matrix-vector product in the
fresh source 3.3 ms instead of 0.03 ms (measured, docs/serving.md). ``threadpoolctl`` is the
library made for setting them.
"""

from __future__ import annotations

import faiss
import numpy  # noqa: F401  (loaded, so that its BLAS is among the pools limited)
from threadpoolctl import threadpool_info, threadpool_limits


def single_threaded_math() -> int:
    """Limit faiss's OpenMP and every loaded BLAS/OpenMP pool to one thread; returns how many
    pools were limited."""
    faiss.omp_set_num_threads(1)
    threadpool_limits(limits=1)
    return len(threadpool_info())
