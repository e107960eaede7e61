"""Shared test set-up: the test doubles (``tests/doubles.py``), and the split between the
torch-free suite and the tests that need PyTorch.

Tests that need PyTorch carry ``@pytest.mark.torch``, or use a fixture that calls
``doubles.skip_without_torch()`` (every fixture that builds the bundled classifier, which the
emulators serve), or live in ``denoisers/`` and ``models/`` (torch throughout); without
PyTorch installed they are skipped, so that
``pip install -e '.[test]'`` without the ``[torch]`` extra runs the torch-free part of the
suite (CI runs it once that way and once with PyTorch).

``$ROBUST_API_HOME``, the folder of the default query log, is a fresh temporary folder for
every test (the ``robust_api_home`` fixture, autouse), so that nothing is written into the
real home folder.
"""

import pytest

from doubles import HAS_TORCH, TORCH_SKIP_REASON

#: Folders whose every test needs PyTorch: not even collected without it (their modules import torch).
collect_ignore_glob = [] if HAS_TORCH else ["denoisers/*", "models/*", "commands/test_denoiser_cli.py"]


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: needs PyTorch (skipped when it is not installed)")


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason=TORCH_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("torch") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _robust_api_home_for_the_session(tmp_path_factory):
    """The default log's data directory ($ROBUST_API_HOME) is a temporary folder for the whole
    session (module- and session-scoped fixtures too), never the user's real one."""
    patch = pytest.MonkeyPatch()
    patch.setenv("ROBUST_API_HOME", str(tmp_path_factory.mktemp("robust-api-home-session")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def robust_api_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty $ROBUST_API_HOME (where ``RobustAPI(log=None)`` and the
    command line put the default query log), so no test writes into the real home folder and
    no test reuses another's logged answers. Child processes inherit it. Returns the folder."""
    home = tmp_path_factory.mktemp("robust-api-home")
    monkeypatch.setenv("ROBUST_API_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")``): its tensors are tiny, and
    extra threads only add synchronisation, which costs seconds per pass on a loaded machine.
    The previous count is restored for the other modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
