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


def run_paper_evaluations(m, p, device: str = 'cpu') -> None:
    "One evaluation of each kind of method `m` (profile `p`) on a few SynthCXR items: every number finite, in range."
    from elvis_nb.core import CHEXPERT_LABELS
    from elvis_nb.data.synth import SynthClassification, SynthGrounding, SynthSegmentation
    from elvis_nb.eval.grounding import evaluate_grounding
    from elvis_nb.eval.locality import evaluate_locality
    from elvis_nb.eval.retrieval import dataset_labels, evaluate_retrieval
    from elvis_nb.eval.segmentation import SegmentationConfig, evaluate_segmentation
    from elvis_nb.eval.transfer import evaluate_transfer
    from elvis_nb.eval.zeroshot import evaluate_zero_shot
    m = m.to(device).eval()
    cls = SynthClassification('test', p, 0, n=8)
    zs = evaluate_zero_shot(m, cls, n_prompts=1, batch_size=4, device=device)
    assert zs['n_images'] == 8 and 0 <= zs['both']['accuracy'] <= 1
    labels = dataset_labels(cls)
    cols = [c for c in range(len(CHEXPERT_LABELS)) if 2 <= int((labels[:, c] == 1).sum()) <= 6][:2]
    r = evaluate_retrieval(m, cls, cols, ks=(1,), n_query=1, kinds=('global', 'local'), class_names=CHEXPERT_LABELS,
                           device=device)
    assert r['classes'] and all(math.isfinite(v) for v in _numbers(r))
    t = evaluate_transfer(m, SynthClassification('train', p, 0, n=8), cls, cls, cols, fractions=(1.0,), probe_epochs=1,
                          finetune_epochs=1, batch_size=4, device=device)
    assert all(math.isfinite(v) for v in _numbers(t))
    g = evaluate_grounding(m, SynthGrounding('test', p, 0, n=4), batch_size=4, device=device)
    assert all(math.isfinite(v) for v in _numbers(g['phrase_mean']))
    loc = evaluate_locality(m, SynthClassification('test', p, 0, n=4), batch_size=4, device=device)
    assert all(math.isfinite(v) for v in _numbers(loc))
    seg_sets = [SynthSegmentation('pneumothorax', s, p, 0, n=4) for s in ('train', 'val', 'test')]
    seg, _ = evaluate_segmentation(m.image_encoder, *seg_sets, SegmentationConfig(batch_size=2, decoder_channels=(32, 16, 8, 8, 8)),
                                   epochs=1, device=device)
    assert 0 <= seg['dice'] <= 1


def test_paper_evaluations():
    run_paper_evaluations(paper_method('elvis'), paper_profile())


def test_bench_counts_step_flops_on_cpu():
    "bench/train.py's FLOP count (the numerator of its MFU) runs on CPU: a step's FLOPs grow ~linearly with the batch."
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location('bench_train', Path(__file__).parents[1] / 'bench' / 'train.py')
    bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    seed_everything(0)
    m = build_method('elvis', 'smoke')
    f2, f4 = bench.step_flops(m, 2), bench.step_flops(m, 4)
    assert f2 > 0 and 1.7 < f4 / f2 < 2.3, (f2, f4)
    assert bench.peak_tflops('NVIDIA H200') == 989 and bench.peak_tflops('some other card') is None


def _numbers(d) -> list[float]:
    "Every int/float inside a nested dict/list (booleans excluded)."
    if isinstance(d, dict): return [x for v in d.values() for x in _numbers(v)]
    if isinstance(d, (list, tuple)): return [x for v in d for x in _numbers(v)]
    return [float(d)] if isinstance(d, (int, float)) and not isinstance(d, bool) else []
