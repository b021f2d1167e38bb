"""The functions behind the explorers (eval.inspect) and the widgets' error handling (explore), on smoke-sized models."""
import numpy as np
import pytest
import torch

from elvis_nb.eval.inspect import (_open_cached, encode_studies, inspection_studies, open_method, phrase_grounding, region_at,
                                   region_similarity_maps, report_words, target_distributions, umap_embedding_cached,
                                   word_attention_map)
from elvis_nb.explore import GroundingExplorer, PatchExplorer, TargetsExplorer, WordExplorer


@pytest.fixture(scope='module')
def studies(): return inspection_studies('smoke', n=3)


@pytest.fixture(scope='module')
def encoded(studies): return {n: encode_studies(open_method(n), studies) for n in ('convirt', 'gloria', 'elvis')}


def test_target_limits(encoded):
    "τ_tgt → 0: q is one-hot on the element; τ_tgt → ∞: uniform; p is a distribution; padded words get nothing."
    v = encoded['elvis']['image']
    n = v['y'].shape[1]
    sharp = target_distributions(v['y'][1], v['z'][1], v['z_cross'][1], 3, tau_tgt=1e-4)
    assert torch.allclose(sharp['q'], torch.eye(n)[3], atol=1e-6) and sharp['diag_mass'] == pytest.approx(1.0)
    flat = target_distributions(v['y'][1], v['z'][1], v['z_cross'][1], 3, tau_tgt=1e4)
    assert flat['entropy'] == pytest.approx(np.log(n), abs=1e-4)
    assert float(flat['p'].sum()) == pytest.approx(1.0, abs=1e-5)
    t = encoded['elvis']['text']; mask = t['mask'][0]
    w = target_distributions(t['y'][0], t['z'][0], t['z_cross'][0], 1, mask=mask)
    assert float(w['q'][~mask].sum()) == 0 and float(w['p'][~mask].sum()) == 0
    # cross-entropy ≥ entropy of q (Gibbs): H(q, p) = H(q) + KL(q‖p)
    assert w['cross_entropy'] >= w['entropy'] - 1e-5


def test_region_map_is_one_at_itself(encoded):
    for name, enc in encoded.items():
        for point in ((0.0, 0.0), (0.5, 0.5), (0.99, 0.3)):
            m = region_similarity_maps(enc, 0, point)
            assert m['region'] == region_at(m['grid'], point)
            for k in ('y', 'z', 'z_cross'):
                if m[k] is None: assert k == 'z_cross' and name != 'elvis'; continue
                assert float(m[k].flatten()[m['region']]) == pytest.approx(1.0, abs=1e-5)
                assert float(m[k].max()) <= 1 + 1e-5


def test_word_attention_is_a_distribution(encoded):
    for name in ('gloria', 'elvis'):
        a = word_attention_map(encoded[name], 0, [0, 2])
        assert float(a.mean()) == pytest.approx(1.0, abs=1e-5) and float(a.min()) >= 0
    assert word_attention_map(encoded['convirt'], 0, [0]) is None
    # GLoRIA counts [CLS] as element 0: word k of the report is the same word for both methods
    assert report_words(encoded['gloria'], 0) == report_words(encoded['elvis'], 0)
    g = encoded['gloria']; n_regions = g['grid'][0] * g['grid'][1]
    assert torch.allclose(word_attention_map(g, 0, [1]).flatten() / n_regions, g['attention'][0, 2], atol=1e-6)


def test_random_init_is_reproducible():
    a = next(open_method('gloria').parameters()).clone()
    _open_cached.cache_clear()
    assert torch.equal(next(open_method('gloria').parameters()), a)


def test_phrase_grounding_scores(studies):
    r = phrase_grounding(open_method('elvis'), studies['image'][0], studies['phrase'][0], studies['boxes'][0], studies['geometry'][0])
    assert r['map'].shape == tuple(studies['geometry'][0]['orig_size'])
    assert r['cnr'] >= 0 and 0 < r['chance'] < 1 and isinstance(r['peak_in_box'], bool)


def test_umap_cache(tmp_path):
    "Fitted once, then read from the cache; another seed or other features is another entry."
    calls = []
    def fit(x, seed): calls.append(seed); return x[:, :2].numpy() + seed
    feats = {'y': torch.randn(20, 8), 'z': torch.randn(20, 4), 'zone': torch.zeros(20, dtype=torch.long), 'finding': torch.zeros(20, dtype=torch.long)}
    a, b = umap_embedding_cached(feats, 0, tmp_path, fit), umap_embedding_cached(feats, 0, tmp_path, fit)
    assert (a['cached'], b['cached'], len(calls)) == (False, True, 2) and np.allclose(a['y'], b['y'])
    umap_embedding_cached(feats, 1, tmp_path, fit)
    umap_embedding_cached({**feats, 'z': feats['z'] + 1}, 0, tmp_path, fit)
    assert len(calls) == 6 and len(list(tmp_path.glob('*.npz'))) == 3


@pytest.mark.parametrize('models, expect', [
    (['/no/such/run/pretrain/model'], 'does not exist'),
    (['resnet'], 'unknown method'),
    ([''], 'no model'),
])
def test_bad_model_is_a_message(models, expect):
    for cls in (TargetsExplorer, PatchExplorer, WordExplorer, GroundingExplorer):
        ex = cls(models, n_studies=2)
        assert expect in ex.message.value and ex.picture.value == b'', (cls.__name__, ex.message.value)


def test_other_method_or_size_is_a_message(tmp_path):
    "A checkpoint of another size than the other models, or an empty folder, is a sentence in the widget."
    open_method('gloria', 'smoke').save_pretrained(tmp_path / 'gloria' / 'model')
    ex = PatchExplorer(['elvis', str(tmp_path / 'gloria' / 'model')], n_studies=2)
    assert ex.message.value == '' and len(ex.picture.value) > 1000          # same size: fine
    ex.models.value = f"{tmp_path / 'gloria' / 'model'}\nconvirt"; ex.load()
    assert ex.message.value == ''
    big = PatchExplorer(['elvis'], profile=None, n_studies=2)
    big.models.value = f"{tmp_path / 'gloria' / 'model'}"; big.profile = 'quick'; big.load()
    assert 'sizes differ' in big.message.value
    (tmp_path / 'empty').mkdir()
    empty = WordExplorer([str(tmp_path / 'empty')], n_studies=2)
    assert 'no config.json' in empty.message.value


def test_controls_redraw():
    ex = TargetsExplorer(['elvis'], n_studies=2)
    before = ex.picture.value
    ex.tau_tgt.value = 0.01
    assert ex.picture.value != before and ex.message.value == ''
    ex.modality.value = 'text'; ex.element.value = 200                   # beyond the words: clamped, not an error
    assert ex.message.value == ''
