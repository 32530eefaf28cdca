"""Peak memory and wall time of a region (CPU; the CUDA branch is exercised where available)."""

import time

import numpy as np
import pytest
import torch

from lit_edit.evaluation.efficiency import PeakMemory, Stopwatch


def test_cpu_peak_rss_tracks_allocations_and_resets():
    memory = PeakMemory("cpu")
    with memory:
        pass
    baseline = memory.peak_mb
    with memory:
        big = np.ones(256 * 2**20 // 8)  # 256 MB, pages touched
        del big
    big_peak = memory.peak_mb
    with memory:
        small = torch.ones(32 * 2**20 // 4)  # 32 MB
        del small
    if memory.lifetime_peak:
        pytest.skip("peak RSS cannot be reset here; only the lifetime peak is available")
    assert 0.85 * 256 < big_peak - baseline < 1.25 * 256
    assert memory.peak_mb < big_peak - 128  # the reset forgot the earlier 256 MB
    assert memory.max_peak_mb == big_peak


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_allocated():
    memory = PeakMemory("cuda")
    with memory:
        x = torch.ones(64 * 2**20 // 4, device="cuda")
        del x
    assert memory.peak_mb >= 64


def test_stopwatch_accumulates():
    watch = Stopwatch()
    for _ in range(2):
        with watch:
            time.sleep(0.02)
    assert watch.count == 2
    assert 0.02 <= watch.last < 0.5
    assert 0.04 <= watch.elapsed < 1.0
    watch.reset()
    assert (watch.count, watch.elapsed) == (0, 0.0)
