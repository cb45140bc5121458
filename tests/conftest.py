import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # small tensors: one thread is fastest and immune to a busy machine
    yield


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Each test loads its own tiny folders (a path may be reused by tmp_path across tests)."""
    from poegen.experts import cache
    cache.clear()
    yield
    cache.clear()
