"""Shared fixtures."""

import pytest
import torch


@pytest.fixture()
def one_thread():
    """Run a test's torch work on one thread: the tensors in unit tests are small, and the machine's
    two cores are shared with other processes, where two threads each thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A real pair bundle of two tiny alexnet-32 models (3 classes, 48 instances, class 'c' only in the
    source domain) with an accuracy history: what the app's tests read without a tracking server."""
    from helpers.bundles import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "diagnostics")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    from helpers.browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
