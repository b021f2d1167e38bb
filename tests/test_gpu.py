"""The `paper` profile on a CUDA GPU, through the same experiment notebooks (skipped where torch sees no GPU).

ResNet-50 at 299 px with layer3 locals (19×19), bf16 autocast, batch 8, two optimiser steps. ClinicalBERT is used when
its folder is on disk (elvis_nb.models.encoders.resolve_local); otherwise the offline small BERT stands in, said in
the results.
"""
import pytest

pytestmark = pytest.mark.gpu


def _overrides():
    from elvis_nb.core import get_profile
    from elvis_nb.models.encoders import resolve_local
    over = {'n_pretrain': 64, 'n_eval': 32}
    if resolve_local(get_profile('paper').text_encoder) is None: over['text_encoder'] = 'small'
    return over


@pytest.mark.parametrize('method', ['convirt', 'gloria', 'elvis'])
def test_paper_profile_pretrains_on_gpu(method, tmp_path):
    from elvis_nb.runner import run_experiment
    res = run_experiment('pretrain', tmp_path, profile='paper', method=method, device='cuda', max_steps=2, batch_size=8,
                         options={'profile_overrides': _overrides()})
    assert res['steps'] == 2
    assert res['final_val']['loss'] == res['final_val']['loss']  # finite, not NaN
