"""The inline tests of every chapter notebook (what `nbdev_test` runs), one pytest test per notebook.

Experiment notebooks (nbs/experiments/) are programs driven by papermill: tests/test_experiments.py runs them.
"""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))


@pytest.mark.parametrize('nb', CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_notebook(nb, monkeypatch):
    from nbdev.test import test_nb
    monkeypatch.chdir(nb.parent)
    force = ['gpu'] if torch.cuda.is_available() else []
    ok, _ = test_nb(nb, skip_flags=['notest', 'gpu', 'slow'], force_flags=force, showerr=True, basepath=ROOT)
    assert ok, f'inline tests of {nb.name} failed (the error is printed above)'
