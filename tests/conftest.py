import os

import pytest
import torch

os.environ.setdefault("MLFLOW_TRACKING_URI", "")
torch.set_num_threads(1)  # tiny models: one thread is fastest and avoids contention


@pytest.fixture
def tiny():
    from toolkit.models.zoo import tiny_random

    return tiny_random(seed=0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
