"""The malloc tuning used by the command line and the benchmarks; the device resolver."""

import platform

import pytest
import torch

from mlflow_transfer.errors import TransferError
from mlflow_transfer.runtime import available_devices, keep_freed_memory, resolve_device


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_on_glibc_and_tensors_still_work():
    assert keep_freed_memory() is True
    x = torch.ones(4096, 4096)  # 64 MiB: above the default mmap threshold
    del x
    assert float(torch.ones(4096, 4096).sum()) == 4096 * 4096


# --------------------------------------------------------------------------- devices (issue 12, point 3)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_cpu_is_always_present_and_auto_takes_the_best_device_present():
    assert available_devices()[0] == "cpu"
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(" CPU ")
    expected = "cuda" if torch.cuda.is_available() else "mps" if "mps" in available_devices() else "cpu"
    assert resolve_device("auto").type == expected == resolve_device().type


@NO_CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_an_absent_device_names_the_devices_present_and_the_fix(name):
    # genuinely absent on a machine without CUDA: nothing of torch is mocked
    with pytest.raises(TransferError) as caught:
        resolve_device(name)
    message = str(caught.value)
    assert message.startswith(f"Expected device {name!r} to be present; got only {available_devices()}")
    assert "--device auto" in message and "--device cpu" in message


@pytest.mark.parametrize("name", ["gpu", "cpu:1", "", "cuda:x", 3])
def test_an_unknown_device_lists_the_accepted_ones(name):
    with pytest.raises(TransferError, match=r"Expected a device among \['auto', 'cpu', 'cuda', 'mps'\].*--device cpu"):
        resolve_device(name)
