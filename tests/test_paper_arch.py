"""The `paper` profile's architecture on CPU, in every CI run: ResNet-50 at 299 px with stage-3 locals (19×19),
768-wide text (the ClinicalBERT stand-in when ClinicalBERT is not on disk), the paper's heads and local stage.

Each method runs forward and backward on a batch of 2 in fp32 and under bf16 autocast (the `paper` profile's
precision); ELVIS also takes one optimiser step through `elvis_nb.train.train` and one evaluation of each kind on a
few SynthCXR items. One paper-width model (~110 M parameters) is held at a time.
"""
import math

import pytest
import torch

from elvis_nb.core import get_profile, seed_everything
from elvis_nb.data.synth import SynthPretrain
from elvis_nb.data.transforms import collate
from elvis_nb.models.encoders import text_encoder_or_standin
from elvis_nb.models.methods import build_method

METHODS = ('convirt', 'gloria', 'elvis')
B = 2


def paper_profile(**overrides):
    "The `paper` profile on CPU, with the ClinicalBERT stand-in when ClinicalBERT is not on disk."
    p = get_profile('paper')
    return get_profile(p, text_encoder=text_encoder_or_standin(p.text_encoder), device='cpu', num_workers=0, **overrides)


_built: dict = {}


def paper_method(name: str):
    "The `paper`-profile method `name`, built once and shared by the tests that use it (one model held at a time)."
    if name not in _built:
        _built.clear()
        seed_everything(0)
        _built[name] = build_method(name, paper_profile())
    return _built[name]


@pytest.fixture(scope='module')
def batch():
    items = [SynthPretrain('train', paper_profile(), seed=0, n=B, cache=False)[i] for i in range(B)]
    return collate(items)


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
@pytest.mark.parametrize('name', METHODS)
def test_paper_architecture_forward_backward(name, precision, batch):
    m = paper_method(name).train()
    p = m.profile
    stage = 4 if name == 'convirt' else 3                                 # ConVIRT's locals: its global head on stage 4
    assert (m.text_encoder.dim, m.config.embed_dim, m.config.local_stage) == (768, 768, stage)
    assert m.image_encoder.local_dim == (256, 512, 1024, 2048)[stage - 1]     # ResNet-50's stage widths
    assert batch['image'].shape[-1] == p.image_size == 299
    tokens = m.tokenize(batch['text'])
    assert tokens['input_ids'].shape == (B, p.max_tokens)
    m.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
        img = m.encode_image(batch['image'])
        out = m(batch['image'], tokens)
    side = 19 if stage == 3 else 10                                       # ⌈299 / 16⌉, ⌈299 / 32⌉
    assert img.grid == (side, side) and img.local_emb.shape == (B, side * side, 768)
    assert torch.isfinite(out.loss), (name, precision, {k: float(v) for k, v in out.components.items()})
    out.loss.backward()
    grads = [q.grad for q in m.parameters() if q.requires_grad]
    assert all(g is not None for g in grads[:3]) and all(torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_paper_training_step(tmp_path):
    "One optimiser step of ELVIS (the method that crashed under bf16) through the training loop, bf16 autocast."
    from elvis_nb.train import TrainConfig, train
    m = paper_method('elvis')
    before = m.heads.image_local.fc1.weight.detach().clone()
    data = (SynthPretrain('train', paper_profile(), seed=0, n=B, cache=False),
            SynthPretrain('val', paper_profile(), seed=0, n=B, cache=False))
    r = train(TrainConfig(method='elvis', profile='paper', out_dir=str(tmp_path), device='cpu', precision='bf16',
                          batch_size=B, max_steps=1, epochs=1, val_at_start=False, progress=False, resume=False,
                          profile_overrides={'text_encoder': m.profile.text_encoder, 'device': 'cpu', 'num_workers': 0}),
              method=m, datasets=data)
    assert r.steps == 1
    assert math.isfinite(r.final_val['loss'])
    assert not torch.equal(before, m.heads.image_local.fc1.weight.detach())   # the step moved the weights
    assert (tmp_path / 'model' / 'config.json').exists()
