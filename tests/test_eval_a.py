"""Evaluation A (retrieval, zero-shot, transfer, reference): metrics against independent implementations, real
methods through the Method interface, bad inputs, and the two experiment notebooks under `smoke`."""
import pytest
import torch

from elvis_nb.eval.retrieval import (embed_images, embed_texts, evaluate_retrieval, local_similarity, precision_at_k,
                                     relevance, similarity)
from elvis_nb.models.methods import load_method
from elvis_nb.eval.transfer import auroc, evaluate_transfer, summarise_auroc
from elvis_nb.eval.zeroshot import char_count_mask, evaluate_zero_shot, macro_f1
from elvis_nb.eval.reference import comparison_table, rows_from_results


# ---------------------------------------------------------------- metrics against independent implementations
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_auroc_matches_sklearn(seed):
    from sklearn.metrics import roc_auc_score
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(500, 6, generator=g) < torch.linspace(0.02, 0.9, 6)).long()
    s = (y * torch.rand(6, generator=g) + torch.rand(500, 6, generator=g)).mul(3).round()    # coarse: many ties
    v = torch.rand(500, 6, generator=g) > 0.3
    a, am = auroc(s, y), auroc(s, y, v)
    for c in range(6):
        assert a[c].item() == pytest.approx(roc_auc_score(y[:, c], s[:, c]), abs=1e-6)
        assert am[c].item() == pytest.approx(roc_auc_score(y[v[:, c], c], s[v[:, c], c]), abs=1e-6)


def test_auroc_hand_and_degenerate():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.75)
    assert auroc(torch.tensor([1., 1, 1]), torch.tensor([0, 1, 0])).item() == pytest.approx(0.5)   # all tied
    r = auroc(torch.rand(5, 2), torch.tensor([[1, 0]] * 5))       # class 0 without negatives, class 1 without positives
    assert r.isnan().all()
    with pytest.raises(ValueError, match='no class of'): summarise_auroc(r, ['a', 'b'])


def test_precision_at_k_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    S, R = torch.randn(12, 60, generator=g), torch.rand(12, 60, generator=g) < 0.25
    P = precision_at_k(S, R, ks=(1, 5, 10, 50))
    for q in range(12):
        order = sorted(range(60), key=lambda i: -S[q, i].item())
        for j, k in enumerate((1, 5, 10, 50)):
            assert P[q, j].item() == pytest.approx(sum(R[q, i].item() for i in order[:k]) / k)
    with pytest.raises(ValueError, match='Prec@61 needs at least 61'): precision_at_k(S, R, ks=(61,))


def test_relevance_rule():
    labels = torch.tensor([[1., 0], [-1, 1], [0, 1]])               # uncertain (-1) is not relevant
    assert relevance(torch.tensor([0, 1]), labels).tolist() == [[True, False, False], [False, True, True]]


def test_local_similarity_float64_and_blocks():
    "Blocked vs unblocked, float32 vs float64, and padding invariance."
    g = torch.Generator().manual_seed(3)
    W, V = torch.randn(4, 6, 8, generator=g, dtype=torch.float64), torch.randn(7, 5, 8, generator=g, dtype=torch.float64)
    M = torch.arange(6)[None] < torch.tensor([6, 2, 1, 4])[:, None]
    full = local_similarity(W, M, V)
    assert torch.allclose(local_similarity(W, M, V, max_elements=1), full, atol=1e-5)
    W2 = W.clone(); W2[~M] = 100.0                                  # garbage in padding must not matter
    assert torch.allclose(local_similarity(W2, M, V), full, atol=1e-5)
    assert torch.allclose(local_similarity(W, M, V, agg='max'), 5 * local_similarity(W, M, V, gamma2=1.0, agg='max'), atol=1e-5)


def test_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 5, (300,), generator=g)
    p = torch.where(torch.rand(300, generator=g) < 0.5, t, torch.randint(0, 5, (300,), generator=g))
    assert macro_f1(p, t, 5)[0] == pytest.approx(f1_score(t, p, average='macro'), abs=1e-6)


def test_char_count_mask_reads_padding():
    m = torch.tensor([[False, True, True, True, False, False]])   # [CLS] w w w [SEP] pad
    bug = char_count_mask(['small left effusion'], m)
    assert bug.sum() == 5 and not bug[0, 0]                        # 19 characters: every slot after [CLS]


# ---------------------------------------------------------------- real methods through the Method interface
from elvis_nb.core import METHOD_NAMES as METHODS


@pytest.fixture(scope='module')
def smoke_sets():
    from elvis_nb.data.synth import SynthClassification, SynthPretrain
    return SynthPretrain('test', 'smoke', 0), SynthClassification('test', 'smoke', 0)


@pytest.mark.parametrize('name', METHODS)
def test_methods_embed_and_score(name, smoke_sets):
    torch.manual_seed(0)
    m = load_method('', name, 'smoke')
    pre, cls = smoke_sets
    ie = embed_images(m, torch.stack([pre[i]['image'] for i in range(6)]), batch_size=4)
    te = embed_texts(m, [pre.study(i).text for i in range(6)], batch_size=4)
    assert ie.global_emb.shape[0] == 6 and te.mask.any(1).all()
    for kind in ('global', 'local', 'combined'):
        s = similarity(te, ie, kind)
        assert s.shape == (6, 6) and torch.isfinite(s).all()
    zs = evaluate_zero_shot(m, cls, n_prompts=2, batch_size=8)
    assert zs['n_images'] == len(cls) and 0 <= zs['both']['accuracy'] <= 1


def test_bad_checkpoint_is_refused(tmp_path):
    torch.manual_seed(0)
    load_method('', 'convirt', 'smoke').save_pretrained(tmp_path / 'ck')
    assert load_method(str(tmp_path / 'ck'), 'convirt', 'smoke').name == 'convirt'
    with pytest.raises(ValueError, match="holds a 'convirt' model"):
        load_method(str(tmp_path / 'ck'), 'gloria', 'smoke')
    with pytest.raises(ValueError, match='image_size 64'):
        load_method(str(tmp_path / 'ck'), 'convirt', 'quick')


def test_no_positives_errors_and_counted_skips(smoke_sets):
    torch.manual_seed(0)
    m = load_method('', 'convirt', 'smoke')
    pre, cls = smoke_sets
    with pytest.raises(ValueError, match='no class has enough positive images'):
        evaluate_retrieval(m, cls, [5], ks=(1,), n_query=1)          # column 5 = Fracture: SynthCXR draws none
    from elvis_nb.core import CHEXPERT_LABELS
    res = evaluate_retrieval(m, cls, [CHEXPERT_LABELS.index('Fracture'), CHEXPERT_LABELS.index('Edema')], ks=(1,),
                             n_query=1, kinds=('global',), class_names=CHEXPERT_LABELS)
    assert 'Fracture' in res['skipped_classes'] and res['classes'] == ['Edema']
    frac = CHEXPERT_LABELS.index('Fracture')
    with pytest.raises(ValueError, match="no class of \\['Fracture'\\]"):
        evaluate_transfer(m, pre, pre, cls, [frac], ['Fracture'], modes=('probe',), fractions=(1.0,), probe_epochs=1, batch_size=8)


# ---------------------------------------------------------------- experiment notebooks under smoke
def test_eval_retrieval_notebook_smoke(tmp_path):
    from elvis_nb.runner import run_experiment
    res = run_experiment('eval_retrieval', tmp_path, profile='smoke', method='gloria', seed=1)
    assert {'retrieval', 'zeroshot', 'zeroshot_bug_compatible', 'method', 'random_init'} <= set(res)
    assert res['method'] == 'gloria' and res['random_init'] and res['seed'] == 1
    assert {'8x200', '5x200'} <= set(res['retrieval'])
    assert 'image->image' in res['retrieval']['8x200'] and 'image->text' in res['retrieval']['5x200']
    assert {'global', 'local', 'both'} <= set(res['zeroshot'])
    assert (tmp_path / 'retrieval_8x200.png').exists() and (tmp_path / 'zeroshot_confusion.png').exists()
    assert rows_from_results(res, 'gloria') and len(comparison_table(rows_from_results(res, 'gloria')))


def test_eval_transfer_notebook_smoke(tmp_path):
    from elvis_nb.runner import run_experiment
    res = run_experiment('eval_transfer', tmp_path, profile='smoke', method='convirt', fractions=[0.1, 1.0])
    assert set(res['transfer']) == {'probe', 'finetune'}
    for mode in ('probe', 'finetune'):
        assert {'0.1', '1.0'} <= set(res['transfer'][mode])
        r = res['transfer'][mode]['1.0']
        assert r['status'] in ('ok', 'collapsed', 'not_converged') and 'reason' in r
        assert r['auroc_mean'] is None or 0 <= r['auroc_mean'] <= 1
        assert r['n_classes'] + len(r['skipped_classes']) == 5
    assert (tmp_path / 'transfer_auroc.png').exists()


def test_prompts_and_queries_use_the_synthcxr_vocabulary():
    "Zero-shot templates and SynthCXR text queries tokenise without [UNK] under the SynthCXR tokenizer."
    from elvis_nb.eval.retrieval import SYNTH_TEXT_QUERIES
    from elvis_nb.eval.zeroshot import PROMPT_TEMPLATES, all_prompts
    m = load_method('', 'gloria', 'smoke')
    texts = sorted({p for a in PROMPT_TEMPLATES.values() for p in all_prompts(a)} | {t for v in SYNTH_TEXT_QUERIES.values() for t in v})
    ids = m.tokenize(texts)['input_ids']
    unk = m.text_encoder.tokenizer.unk_token_id
    assert not (ids == unk).any(), [t for t, row in zip(texts, ids) if (row == unk).any()]


def test_finetune_handles_a_batch_of_one():
    "Fine-tuning on encoder features never runs the projection heads, whose BatchNorm cannot train on one image."
    import torch
    from elvis_nb.models.methods import build_method
    from elvis_nb.eval.transfer import ImageClassifier
    clf = ImageClassifier(build_method('elvis', 'smoke'), 5, 'global_feats', freeze=False).train()
    assert clf(torch.rand(1, 1, 64, 64)).shape == (1, 5)
