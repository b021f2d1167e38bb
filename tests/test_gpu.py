"""The `paper` profile on a CUDA GPU, through the same experiment notebooks (skipped where torch sees no GPU).

ResNet-50 at 299 px with layer3 locals (19×19), bf16 autocast, batch 8, two optimiser steps. ClinicalBERT is used when
its folder is on disk (elvis_nb.models.encoders.resolve_local); otherwise the ClinicalBERT stand-in (random init,
BERT-base shape, `clinicalbert-standin`) takes its place at the same width, and the results' profile says so.
The evaluations run in-process on a few items: the evaluation notebooks take a profile *name* only (no overrides of
`n_eval` or `text_encoder`), so at `paper` they would evaluate 1000 items each with ClinicalBERT.
"""
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU visible to torch')]
METHODS = ['convirt', 'gloria', 'elvis']


def _overrides():
    from elvis_nb.core import get_profile
    from elvis_nb.models.encoders import text_encoder_or_standin
    return {'n_pretrain': 64, 'n_eval': 32, 'text_encoder': text_encoder_or_standin(get_profile('paper').text_encoder)}


@pytest.mark.parametrize('method', METHODS)
def test_paper_profile_pretrains_on_gpu(method, tmp_path):
    from elvis_nb.runner import run_experiment
    res = run_experiment('pretrain', tmp_path, profile='paper', method=method, device='cuda', max_steps=2, batch_size=8,
                         options={'profile_overrides': _overrides()})
    assert res['steps'] == 2
    assert res['final_val']['loss'] == res['final_val']['loss']  # finite, not NaN


@pytest.mark.parametrize('method', METHODS)
def test_paper_evaluations_on_gpu(method):
    "One evaluation of each kind (retrieval, zero-shot, probe, grounding, locality, segmentation) on a few items, CUDA."
    from elvis_nb.core import get_profile
    from elvis_nb.models.methods import build_method
    from test_paper_arch import run_paper_evaluations
    p = get_profile('paper', **_overrides())
    run_paper_evaluations(build_method(method, p), p, device='cuda')


@pytest.fixture(scope='module')
def paper_checkpoint(tmp_path_factory):
    "An ELVIS model pre-trained for one step at the `paper` architecture (stand-in text encoder), saved as a checkpoint."
    from elvis_nb.runner import run_experiment
    out = tmp_path_factory.mktemp('paper_pretrain')
    run_experiment('pretrain', out, profile='paper', method='elvis', device='cuda', max_steps=1, batch_size=8,
                   options={'profile_overrides': _overrides()})
    return out / 'model'


CHEAP = {  # the experiment notebooks at `paper`, each cut to a few minutes on one GPU by its own parameters
    'eval_retrieval': dict(n_candidate=20, n_prompts=1),
    'eval_transfer': dict(fractions=[1.0], modes=['probe'], epochs=1),
    'eval_segmentation': dict(tasks='pneumothorax', fractions='1.0', modes='frozen', epochs=1, patience=1),
    'eval_grounding': dict(smooth_sigma=0),
    'eval_locality': dict(umap=False),
}


@pytest.mark.parametrize('experiment', list(CHEAP))
def test_paper_evaluation_notebooks_on_gpu(experiment, paper_checkpoint, tmp_path):
    "Every evaluation notebook runs through papermill at the `paper` profile on a paper-architecture checkpoint, on CUDA."
    import math
    from elvis_nb.reproduce import flatten_numbers
    from elvis_nb.runner import run_experiment
    res = run_experiment(experiment, tmp_path, profile='paper', method='elvis', checkpoint=str(paper_checkpoint),
                         device='cuda', **CHEAP[experiment])
    numbers = flatten_numbers(res)
    assert numbers and not any(math.isinf(v) for v in numbers.values()), experiment
