"""Shared test setup: offline hub, the `gpu` marker, and the repository root."""
import os
from pathlib import Path

import pytest

# Nothing may reach a model hub: fail at once instead of retrying for half a minute.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
# papermill kernels inherit this: the notebooks' final `nbdev_export()` cell does nothing under test.
os.environ.setdefault('IN_TEST', '1')

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU (the `paper` profile); skipped where there is none')
    config.addinivalue_line('markers', 'slow: minutes on 2 CPU cores; run with `-m slow`')


def pytest_collection_modifyitems(config, items):
    "`gpu` tests skip without CUDA; `slow` tests (minutes: the `quick` profile) run only when `-m` names them."
    import torch
    no_gpu = pytest.mark.skip(reason='needs a CUDA GPU; none is visible to torch on this machine')
    not_asked = pytest.mark.skip(reason="slow (minutes on 2 CPU cores): run with `-m slow`")
    for item in items:
        if 'gpu' in item.keywords and not torch.cuda.is_available(): item.add_marker(no_gpu)
        if 'slow' in item.keywords and 'slow' not in (config.option.markexpr or ''): item.add_marker(not_asked)


@pytest.fixture(scope='session')
def root() -> Path:
    return ROOT
