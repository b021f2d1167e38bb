"""Segmentation, grounding and locality evaluations (eval-B): metrics against independent implementations,
bad input, and the experiment notebooks under `smoke`."""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from elvis_nb.eval.grounding import (_summary, cnr, evaluate_grounding, gaussian_smooth, map_resolution, miou, miou_chance,
                                    peak_in_region, phrase_region, similarity_map)
from elvis_nb.eval.locality import knn_overlap, locality_scores, spearman
from elvis_nb.eval.segmentation import SegmentationConfig, dice_per_image, segmentation_loss

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- Dice
def _dice_numpy(p, g):
    p, g = p > 0.5, g > 0.5
    if not g.any(): return float(not p.any())
    return 2 * (p & g).sum() / (p.sum() + g.sum())


def test_dice_hand_cases():
    probs, target = torch.zeros(4, 1, 3, 3), torch.zeros(4, 1, 3, 3)
    target[0, 0, 0, :2] = 1; probs[0, 0, 0, 1:] = 0.8           # |P|=2, |G|=2, |P∩G|=1 → 0.5
    probs[2, 0, 1, 1] = 0.51                                    # empty truth, one predicted pixel → 0
    target[3] = 1; probs[3] = 1                                  # perfect → 1
    assert dice_per_image(probs, target).tolist() == [0.5, 1.0, 0.0, 1.0]


def test_dice_vs_numpy():
    probs = torch.from_numpy(RNG.random((32, 1, 10, 10))).float()
    target = torch.from_numpy(RNG.random((32, 1, 10, 10)) > 0.8).float()
    target[:8] = 0; probs[:3] = 0.2
    ref = np.array([_dice_numpy(p, g) for p, g in zip(probs.numpy(), target.numpy())])
    np.testing.assert_allclose(dice_per_image(probs, target).numpy(), ref, atol=1e-6)


def test_segmentation_loss_and_config_errors():
    with pytest.raises(ValueError, match="choose 'dice'"): segmentation_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 'l2')
    with pytest.raises(ValueError, match='unknown segmentation task'): SegmentationConfig(task='heart')
    with pytest.raises(ValueError, match='fraction'): SegmentationConfig(fraction=1.5)


# ---------------------------------------------------------------- CNR, mIoU, peak
def _cnr_numpy(m, a):
    ins, out = m[a], m[~a]
    return abs(np.nanmean(ins) - np.nanmean(out)) / np.sqrt(np.nanvar(ins) + np.nanvar(out))


def test_cnr_hand_case():
    a = torch.tensor([[[True, False], [False, False]]])
    # A = {4}: μ_A 4, σ²_A 0; Ā = {0, 2, 4}: μ 2, σ² 8/3 → CNR = 2 / sqrt(8/3)
    assert math.isclose(cnr(torch.tensor([[[4., 0.], [2., 4.]]]), a).item(), 2 / math.sqrt(8 / 3), rel_tol=1e-6)


def test_cnr_vs_numpy_with_nan_padding():
    maps = torch.from_numpy(RNG.normal(size=(6, 20, 16)))
    maps[:, :3] = float('nan'); maps[2, :, -4:] = float('nan')
    region = torch.stack([phrase_region(torch.tensor([[2 + i, 4, 9 + i, 15], [0, 16, 3, 20]]), (20, 16)) for i in range(6)])
    ref = [_cnr_numpy(m, a) for m, a in zip(maps.numpy(), region.numpy())]
    np.testing.assert_allclose(cnr(maps, region).numpy(), ref, rtol=1e-10)


def test_miou_and_peak_vs_numpy():
    maps = torch.from_numpy(RNG.random((5, 12, 12)) * 0.6)
    region = torch.stack([phrase_region(torch.tensor([[i, i, i + 6, i + 5]]), (12, 12)) for i in range(5)])
    ref = [np.mean([((m > t) & a).sum() / ((m > t) | a).sum() for t in (.1, .2, .3, .4, .5)]) for m, a in zip(maps.numpy(), region.numpy())]
    np.testing.assert_allclose(miou(maps, region).numpy(), ref, rtol=1e-10)
    inside, chance = peak_in_region(maps, region)
    flat = maps.flatten(1).argmax(1)
    assert inside.tolist() == [bool(a.flatten()[j]) for a, j in zip(region, flat)]
    np.testing.assert_allclose(chance.numpy(), region.flatten(1).double().mean(1).numpy())


def test_smoothing_vs_scipy():
    m = torch.from_numpy(RNG.normal(size=(2, 9, 7)))
    ref = np.stack([gaussian_filter(x, 1.5) for x in m.numpy()])
    np.testing.assert_allclose(gaussian_smooth(m, 1.5).numpy(), ref, atol=1e-12)


def test_phrase_box_outside_image_is_an_error():
    with pytest.raises(ValueError, match=r'covers no pixel of the 10×8 image'):
        phrase_region(torch.tensor([[20., 20., 30., 30.]]), (10, 8))
    with pytest.raises(ValueError, match='no boxes'):
        phrase_region(torch.zeros(0, 4), (10, 8))


# ---------------------------------------------------------------- Spearman, kNN overlap
def test_spearman_vs_scipy_with_ties_and_masks():
    a = torch.from_numpy(RNG.integers(0, 5, (10, 40)).astype(float))
    b = a + torch.from_numpy(RNG.integers(0, 3, (10, 40)).astype(float))
    valid = torch.from_numpy(RNG.random((10, 40)) > 0.25)
    ref = [spearmanr(x[m], y[m]).statistic for x, y, m in zip(a.numpy(), b.numpy(), valid.numpy())]
    np.testing.assert_allclose(spearman(a, b, valid).numpy(), ref, rtol=1e-10)


def test_spearman_hand_case():
    # ranks (1,2,3) vs (1,3,2): d² = 0+1+1 → ρ = 1 − 6·2/(3·8) = 0.5
    assert math.isclose(spearman(torch.tensor([[1., 2., 3.]]), torch.tensor([[10., 30., 20.]])).item(), 0.5, rel_tol=1e-9)


def test_locality_limits():
    y = torch.randn(3, 25, 12, generator=torch.Generator().manual_seed(1))
    s = locality_scores(y, 3 * y, k=4)                         # a scaling keeps every cosine
    np.testing.assert_allclose(s['spearman'].numpy(), 1, atol=1e-5)
    np.testing.assert_allclose(s['knn_overlap'].numpy(), 1)
    overlap, chance = knn_overlap(torch.eye(5)[None], torch.eye(5)[None], k=10)   # k larger than the set
    assert chance.item() == 1.0 and overlap.item() == 1.0


# ---------------------------------------------------------------- bad input through the grounding loop
class _ConstantMethod(torch.nn.Module):
    "Maps ∝ the image: the phrase embedding is (1, 0), each region's embedding (brightness, 1 − brightness)."
    def encode_image(self, images):
        from types import SimpleNamespace
        x = torch.nn.functional.avg_pool2d(images, 8)
        return SimpleNamespace(local_emb=torch.cat([x, 1 - x], 1).flatten(2).transpose(1, 2), grid=tuple(x.shape[-2:]))
    def tokenize(self, texts): return {'n': torch.ones(len(texts))}
    def encode_text(self, tokens):
        from types import SimpleNamespace
        return SimpleNamespace(global_emb=torch.tensor([[1., 0.]]).expand(len(tokens['n']), 2))


def _items(boxes_list):
    from elvis_nb.data.transforms import make_geometry
    img = torch.zeros(1, 32, 32); img[:, 8:16, 8:16] = 1
    return [{'id': str(i), 'image': img, 'phrase': 'p', 'category': 'Edema', 'boxes': b, 'orig_boxes': b,
             'orig_size': (32, 32), 'geometry': make_geometry((32, 32), 32)} for i, b in enumerate(boxes_list)]


def test_grounding_counts_skips_and_beats_chance():
    good = torch.tensor([[8., 8., 16., 16.]])
    items = _items([good, good, torch.tensor([[40., 40., 50., 50.]]), torch.zeros(0, 4)])
    r = evaluate_grounding(_ConstantMethod(), items, batch_size=2, smooth_sigma=None, space='global')   # σ = 1.5 cells would swamp a 4×4 grid
    assert r['n_scored'] == 2 and r['skipped'] == {'box outside the image': 1, 'phrase without boxes': 1}
    assert r['phrase_mean']['peak_in_box'] == 1.0 > r['phrase_mean']['chance']
    with pytest.raises(ValueError, match='could be scored'):
        evaluate_grounding(_ConstantMethod(), items[2:], batch_size=2, space='global')


# ---------------------------------------------------------------- information-free and degenerate maps
def _flat_maps():
    "Constant maps of several values, through a float32 resize + pad back to a 40×52 original (rounding jitter)."
    from elvis_nb.data.transforms import make_geometry, map_to_original
    geo = make_geometry((40, 52), 64)
    return torch.stack([map_to_original(torch.full((8, 8), c), geo) for c in (0.1, 0.2, 0.3, -0.4, 0.0, 0.7)])


def _regions(n, size=(40, 52)):
    return torch.stack([phrase_region(torch.tensor([[4 * i, 3 * i, 4 * i + 10, 3 * i + 15]]), size) for i in range(n)])


def test_cnr_degenerate_inputs():
    flat = _flat_maps()
    with np.errstate(invalid='ignore'):                                                          # without a tolerance:
        naive = [_cnr_numpy(m, a) for m, a in zip(flat.numpy(), _regions(len(flat)).numpy())]   # rounding over rounding
    assert np.nanmax(naive) > 0.3
    assert cnr(flat, _regions(len(flat))).tolist() == [0.0] * len(flat)
    top = torch.tensor([[[True, True], [False, False]]])
    assert cnr(torch.tensor([[[2., 2.], [1., 1.]]]), top).item() == math.inf                    # perfect separation: a flag
    assert cnr(torch.tensor([[[2., 2.], [1., 1. + 1e-9]]]), top).item() == math.inf             # … also up to rounding
    assert math.isnan(cnr(torch.full((1, 2, 2), float('nan')), top).item())                     # nothing valid
    assert cnr(torch.zeros(1, 2, 2), top).item() == 0.0
    delta, is_flat = map_resolution(torch.tensor([[[0.3, 0.3 + 1e-6], [0.3, 0.2]]]))
    assert math.isclose(delta.item(), 3e-5, rel_tol=1e-5) and not is_flat.item()


def test_miou_and_peak_degenerate_inputs():
    flat, region = _flat_maps(), _regions(6)
    np.testing.assert_allclose(miou(flat, region).numpy(), miou_chance(flat, region).numpy(), atol=1e-6)
    inside, chance = peak_in_region(flat, region)
    np.testing.assert_allclose(inside.numpy(), chance.numpy(), atol=1e-6)                       # ties: the share in A
    assert (chance > 0).all() and (chance < 1).all()
    nothing = torch.full((1, 4, 4), 0.05)                                                      # below every threshold
    assert miou(nothing, region[:1, :4, :4]).item() == 0.0 == miou_chance(nothing, region[:1, :4, :4]).item()


def test_miou_chance_is_the_shuffled_mean():
    "Against a Monte-Carlo average over random permutations of the valid pixels (a loop over shuffles)."
    m = torch.from_numpy(RNG.random((1, 10, 12)) * 0.6)
    a = phrase_region(torch.tensor([[2, 3, 8, 9]]), (10, 12))[None]
    perms = torch.stack([m.flatten()[torch.randperm(120)] for _ in range(4000)]).view(-1, 10, 12)
    mc = miou(perms, a.expand(len(perms), 10, 12)).mean().item()
    assert math.isclose(miou_chance(m, a).item(), mc, rel_tol=0.05)


def test_identical_region_embeddings_score_chance_through_the_path():
    "Every region alike → similarity_map → smoothing → map_to_original → chance on every metric."
    from elvis_nb.data.transforms import make_geometry, map_to_original
    g = torch.Generator().manual_seed(0)
    z, q = torch.randn(8, 1, 32, generator=g).expand(8, 49, 32), torch.randn(8, 32, generator=g)
    grid = gaussian_smooth(similarity_map(q, z, (7, 7)))
    full = torch.stack([map_to_original(x, make_geometry((40, 52), 56)) for x in grid])
    region = _regions(8)
    assert cnr(full, region).abs().max().item() == 0.0
    np.testing.assert_allclose(miou(full, region).numpy(), miou_chance(full, region).numpy(), atol=1e-6)
    inside, chance = peak_in_region(full, region)
    np.testing.assert_allclose(inside.numpy(), chance.numpy(), atol=1e-6)


def test_grounding_summary_counts_non_finite():
    rows = [{'cnr': c, 'miou': 0.1, 'miou_chance': 0.05, 'peak_in_box': 1.0, 'chance': 0.1} for c in (0.5, math.inf, 1.5)]
    s = _summary(rows)
    assert s['cnr'] == 1.0 and s['n_nonfinite']['cnr'] == 1 and s['n_nonfinite']['miou'] == 0 and s['n'] == 3
    assert _summary(rows[1:2])['cnr'] is None


class _FlatMethod(_ConstantMethod):
    "Every region gets the same embedding: the maps carry no information."
    def encode_image(self, images):
        out = super().encode_image(images)
        out.local_emb = torch.ones_like(out.local_emb) * torch.tensor([0.3, 0.8])
        return out


def test_grounding_loop_scores_chance_on_information_free_maps():
    from elvis_nb.data.transforms import make_geometry
    items = _items([torch.tensor([[8., 8., 16., 16.]]), torch.tensor([[0., 4., 20., 30.]])])
    for it in items: it['orig_size'], it['geometry'] = (30, 26), make_geometry((30, 26), 32)
    r = evaluate_grounding(_FlatMethod(), items, batch_size=2, smooth_sigma=1.5, space='global')
    pm = r['phrase_mean']
    assert pm['cnr'] == 0.0 and math.isclose(pm['peak_in_box'], pm['chance'], abs_tol=1e-6)
    assert math.isclose(pm['miou'], pm['miou_chance'], abs_tol=1e-6) and r['n_nonfinite']['cnr'] == 0
    assert r['items']['cnr'] == [0.0, 0.0] and r['items']['id'] == ['0', '1']


# ---------------------------------------------------------------- experiment notebooks under smoke
def test_eval_segmentation_smoke(tmp_path):
    from elvis_nb.runner import run_experiment
    r = run_experiment('eval_segmentation', tmp_path, profile='smoke', device='cpu', tasks='pneumothorax',
                       fractions='0.1,1.0', modes='frozen,finetune', decoder_width=16)
    assert {'table', 'status', 'fit_health', 'results', 'skipped', 'n_skipped', 'method', 'figures'} <= set(r)
    assert set(r['table']['pneumothorax']) == {'frozen', 'finetune'} and len(r['results']) == 4
    assert set(r['table']['pneumothorax']['frozen']) == {'0.1', '1.0'}
    for x in r['results']:
        assert x['status'] in ('ok', 'collapsed', 'not_converged') and isinstance(x['reason'], str)
        assert (x['dice'] is None) == (x['status'] != 'ok') and (x['dice'] is None or 0 <= x['dice'] <= 1)
        assert r['table']['pneumothorax'][x['mode']][str(x['fraction'])] == x['dice']
    assert 'dice_vs_fraction.png' in r['figures'] and (tmp_path / 'dice_vs_fraction.png').exists()


def test_eval_grounding_smoke(tmp_path):
    from elvis_nb.runner import run_experiment
    r = run_experiment('eval_grounding', tmp_path, profile='smoke', device='cpu', method='gloria', n_figures=2)
    assert {'smoothed', 'raw', 'cnr', 'miou', 'peak_in_box', 'chance', 'n_skipped'} <= set(r)
    assert r['method'] == 'gloria' and len(r['smoothed']['per_class']) > 1
    assert (tmp_path / 'grounding_0.png').exists() and (tmp_path / 'cnr_per_class.png').exists()
    r0 = run_experiment('eval_grounding', tmp_path / 'raw', profile='smoke', device='cpu', method='elvis', smooth_sigma=0, n_figures=1)
    assert 'smoothed' not in r0 and (r0['smooth_sigma'], r0['phrase_space']) == (None, 'local')
    assert r0['peak_in_box'] == r0['raw']['class_mean']['peak_in_box']
    assert len(r0['items']['cnr']) == r0['raw']['n_scored'] and set(r0['n_nonfinite']) >= {'cnr', 'miou', 'peak_in_box'}
    assert 'items' not in r0['raw'] and 0 <= r0['miou_chance'] <= 1


def test_eval_locality_smoke(tmp_path):
    from elvis_nb.runner import run_experiment
    r = run_experiment('eval_locality', tmp_path, profile='smoke', device='cpu', umap=False)
    assert r['methods'] == ['convirt', 'gloria', 'elvis']
    for name, res in r['results'].items():
        assert -1 <= res['image_y_vs_z']['spearman']['mean'] <= 1
        assert (res['image_y_vs_z_cross'] is not None) == res['has_cross_attention']


def test_checkpoint_of_another_method_is_refused(tmp_path):
    from elvis_nb.models.methods import build_method, load_method
    build_method('convirt', 'smoke').save_pretrained(tmp_path / 'ckpt')
    with pytest.raises(ValueError, match='convirt'):
        load_method(tmp_path / 'ckpt', 'elvis', 'smoke')


# ---------------------------------------------------------------- fit health, nested fractions, fine-tuning (chapters 52, 53)
class _ToyEncoder(torch.nn.Module):
    "A Method-like stand-in: per image, its mean brightness and its horizontal-edge energy, times learnable weights."
    def __init__(self, dead: bool = False):
        super().__init__()
        from types import SimpleNamespace
        self.profile, self.dead, self.w = SimpleNamespace(image_size=16), dead, torch.nn.Parameter(torch.ones(2))
        self.bn = torch.nn.BatchNorm1d(2)

    def encode_image(self, x):
        from types import SimpleNamespace
        f = torch.stack([x.mean((1, 2, 3)), (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))], 1)   # [B, 2]
        f = self.bn(f * self.w) * (0 if self.dead else 1)
        return SimpleNamespace(global_feats=f, global_emb=f, local_feats=f[:, None], local_emb=f[:, None], grid=(1, 1))


class _ToySet(torch.utils.data.Dataset):
    "Class 0: bright image; class 1: striped image (labels over CHEXPERT_LABELS' 14 columns, the first two used)."
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.lab = (torch.rand(n, 2, generator=g) < 0.5).float()
        stripes = (torch.arange(16) % 2).float().expand(16, 16)
        self.img = (0.1 * torch.rand(n, 1, 16, 16, generator=g) + 0.5 * self.lab[:, 0, None, None, None]
                    + 0.4 * self.lab[:, 1, None, None, None] * stripes)
    def __len__(self): return len(self.lab)
    def __getitem__(self, i): return {'id': str(i), 'image': self.img[i], 'labels': torch.cat([self.lab[i], torch.zeros(12)])}


def test_collapse_detector_flags_constant_predictions_and_passes_healthy_ones():
    from elvis_nb.eval.transfer import constant_classes, fit_health
    from elvis_nb.eval.segmentation import mask_collapse
    scores = torch.stack([torch.full((8,), -2.0), torch.linspace(-1, 1, 8)], 1)      # class 0 constant, class 1 ranks
    assert constant_classes(scores) == [0] and constant_classes(scores[:, 1:]) == []
    positive = torch.tensor([True, True, False, False])
    assert mask_collapse(torch.zeros(4), positive).startswith('empty mask')
    assert mask_collapse(torch.ones(4), positive).startswith('whole-image mask')
    assert mask_collapse(torch.tensor([0.05, 0.0, 0.0, 0.01]), positive) == ''
    assert fit_health([0.98, 0.97, 0.96])['status'] == 'not_converged'               # the U-Net
    assert fit_health([0.9, 0.5], mask_collapse(torch.zeros(4), positive))['status'] == 'collapsed'
    assert fit_health([0.9, 0.5, 0.3]) == {'status': 'ok', 'reason': ''}


def test_empty_mask_unet_is_detected():
    from elvis_nb.eval.segmentation import SegmentationNet, mask_collapse, segmentation_scores
    from elvis_nb.models.encoders import ImageEncoder, resnet_backbone

    class Empty(torch.nn.Module):
        def forward(self, stages, size): return torch.full((len(stages[0]), 1, *size), -10.0)
    net = SegmentationNet(ImageEncoder(resnet_backbone('tiny')[0]), True, (8, 8, 8)); net.decoder = Empty()
    masks = torch.zeros(4, 1, 64, 64); masks[:2, :, 10:20, 10:20] = 1
    data = [{'image': torch.rand(1, 64, 64), 'mask': m} for m in masks]
    dice, pos, area = segmentation_scores(net, data, batch_size=4)
    assert dice[pos].eq(0).all() and dice[~pos].eq(1).all() and dice.mean() == 0.5   # the "Dice 0.5"
    assert mask_collapse(area, pos) == 'empty mask on all 2 positive images'


def test_nested_fractions_are_subsets_and_hold_a_positive():
    from elvis_nb.eval.transfer import label_fraction
    from elvis_nb.eval.segmentation import fraction_subset, mask_positives
    from elvis_nb.data.synth import SynthSegmentation
    pos = torch.zeros(200, 3, dtype=torch.bool); pos[[5, 150], 0] = True; pos[::2, 1] = True
    sets = [set(label_fraction(200, f, seed=1, positives=pos).tolist()) for f in (0.01, 0.1, 1.0)]
    assert sets[0] <= sets[1] <= sets[2] and len(sets[2]) == 200
    assert all(pos[sorted(s)][:, :2].any(0).all() for s in sets)                     # a positive of each class that has one
    seg = SynthSegmentation('pneumothorax', 'train', 'smoke')
    small, big = fraction_subset(seg, 0.05, 0), fraction_subset(seg, 0.5, 0)
    assert set(small.indices) <= set(big.indices) and mask_positives(seg)[small.indices].any()


def test_finetuning_beats_chance_and_matches_the_probe_on_a_toy_task():
    from elvis_nb.eval.transfer import evaluate_transfer
    torch.manual_seed(0)
    res = evaluate_transfer(_ToyEncoder(), _ToySet(64, 0), _ToySet(32, 2), _ToySet(48, 1), [0, 1], ['bright', 'striped'],
                            fractions=(0.1, 1.0), probe_lr=0.1, finetune_lr=0.01, finetune_epochs=4, batch_size=8)
    for f in ('0.1', '1.0'):
        ft, pr = res['finetune'][f], res['probe'][f]
        assert ft['status'] == 'ok' and ft['auroc_mean'] > 0.8, ft
        assert ft['best_val_auroc'] >= pr['best_val_auroc'] - 1e-9      # LP-FT never ends below its probe on validation
    assert res['probe']['0.1']['n_train'] < res['probe']['1.0']['n_train'] == 64


def test_excluded_fit_is_null_in_results_json():
    import json
    from elvis_nb.eval.transfer import evaluate_transfer
    res = evaluate_transfer(_ToyEncoder(dead=True), _ToySet(32, 0), _ToySet(16, 2), _ToySet(16, 1), [0, 1],
                            modes=('probe',), fractions=(1.0,), probe_epochs=3)
    cell = json.loads(json.dumps(res))['probe']['1.0']
    assert cell['status'] == 'collapsed' and cell['rerun'] and 'constant prediction' in cell['reason']
    assert cell['auroc_mean'] is None and cell['accuracy'] is None and cell['auroc'] is None
    from elvis_nb.reproduce import flatten_numbers, mean_std
    flat = {k: v for k, v in flatten_numbers({'transfer': res}).items() if k.endswith('auroc_mean')}
    assert flat and all(math.isnan(v) for v in flat.values())           # a failed fit reaches the report as NaN ...
    summary = mean_std([0.7, 0.8, *flat.values()])                       # ... counted as excluded, never averaged
    assert (summary['n'], summary['excluded']) == (2, 1) and math.isclose(summary['mean'], 0.75)
