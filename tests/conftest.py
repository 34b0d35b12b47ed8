"""Shared fixtures."""

import os

# On a busy machine, OpenMP threads that spin while they wait (libgomp's default) starve one another: a
# t-SNE of 48 points (openTSNE, n_jobs=-1) took 6-15 s instead of 0.1 s on the two shared cores. Set
# before torch or any other OpenMP runtime loads; the tests' subprocesses inherit it; a user's own
# value is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture()
def one_thread():
    """Run a test's torch work on one thread: the tensors in unit tests are small, and the machine's
    two cores are shared with other processes, where two threads each thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def featurevis_cache(tmp_path_factory):
    """The feature-visualisation image cache in the session's temporary folder, never the user's home
    (subprocesses inherit it)."""
    name = "MLFLOW_TRANSFER_FEATUREVIS_CACHE"
    before = os.environ.get(name)
    os.environ[name] = str(tmp_path_factory.mktemp("featurevis-cache"))
    yield os.environ[name]
    if before is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = before


@pytest.fixture(scope="session")
def sqlite_stores(tmp_path_factory):
    """Opens real sqlite tracking stores: ``with sqlite_stores(root, "experiment") as store:`` (see
    ``helpers.tracking.sqlite_store``), each a copy of one empty store made once a session."""
    from helpers.tracking import make_empty_store, sqlite_store

    template = make_empty_store(tmp_path_factory.mktemp("empty-store") / "mlflow.db")
    return functools.partial(sqlite_store, template=template)


@pytest.fixture()
def tracking_store(tmp_path, sqlite_stores):
    """A test's own sqlite tracking store in ``tmp_path``, MLflow pointed at it (experiment "tests"
    active): a ``helpers.tracking.Store`` with ``root``, ``uri``, ``experiment`` and ``env`` (for
    subprocesses: MLFLOW_TRACKING_URI set, no run or experiment leaked from this process)."""
    with sqlite_stores(tmp_path) as store:
        yield store


@pytest.fixture(scope="module")
def module_store(tmp_path_factory, sqlite_stores, request):
    """One sqlite tracking store that a module's tests share (runs trained once, used by several tests),
    with an experiment named after the module; otherwise as ``tracking_store``."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with sqlite_stores(tmp_path_factory.mktemp("store"), name) as store:
        yield store


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


@pytest.fixture()
def page(browser):
    """A fresh page (1400 × 1000) of the module's Chromium, closed after the test."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    page.close()
