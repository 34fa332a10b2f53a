import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("CAM_TEST_THREADS", "2")))


def hook_count(model: torch.nn.Module) -> int:
    """Every forward/backward hook registered anywhere in the model."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        total += len(getattr(m, "_backward_pre_hooks", {}))
    return total


@pytest.fixture
def count_hooks():
    return hook_count
