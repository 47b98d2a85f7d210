"""Test-wide settings: the suite's models are tiny, so one thread is fastest and avoids
oversubscribing the 2-core CI machine."""

import pytest
import torch

# the asserts of the shared builders report their operands, as the test modules' own do
pytest.register_assert_rewrite("tests.helpers")

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models, the previous number restored after it:
    more threads only add overhead, and on a busy 2-core machine OpenMP oversubscription made
    each forward ~100x slower. Used as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
