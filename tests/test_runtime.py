"""The malloc tuning used by the command line and the benchmarks."""

import platform

import pytest
import torch

from mlflow_transfer.runtime import keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_on_glibc_and_tensors_still_work():
    assert keep_freed_memory() is True
    x = torch.ones(4096, 4096)  # 64 MiB: above the default mmap threshold
    del x
    assert float(torch.ones(4096, 4096).sum()) == 4096 * 4096
