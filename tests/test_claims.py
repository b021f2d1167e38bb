"""Claims and their statistics (`elvis_nb.eval.claims`) on constructed data where the truth is known."""
import math

import numpy as np
import pytest
from scipy import stats

from elvis_nb.eval.claims import (CLAIMS, Claim, claims_table, evaluate_claim, evaluate_claims, flatten_results,
                                  hierarchical_bootstrap, plot_claims, t_interval, validate_claims)


def _values(effect: float, n_seeds: int = 3, noise: float = 0.01, seed: int = 0) -> dict:
    "A comparator 'b' whose seeds differ a lot, and 'a' = b + effect + a little paired noise."
    rng = np.random.default_rng(seed)
    base = 0.6 + 0.1 * rng.standard_normal(n_seeds)          # seed-to-seed spread shared by both methods
    return {('b', 'exp'): {s: {'m': float(base[s])} for s in range(n_seeds)},
            ('a', 'exp'): {s: {'m': float(base[s] + effect + noise * rng.standard_normal())} for s in range(n_seeds)}}


CLAIM = Claim('a > b', 'toy', 'toy', 'a', 'b', 'exp', 'm')


def test_three_verdicts():
    assert evaluate_claim(CLAIM, _values(0.1)).verdict == 'reproduced'
    assert evaluate_claim(CLAIM, _values(-0.1)).verdict == 'not reproduced'
    null = evaluate_claim(CLAIM, _values(0.0, noise=0.05))
    assert null.verdict == 'inconclusive' and null.resolve                 # and it says what would resolve it
    assert evaluate_claim(Claim('a < b', 't', 't', 'a', 'b', 'exp', 'm', direction=-1), _values(-0.1)).verdict == 'reproduced'


def test_null_rarely_called():
    "Under a true null the claimed direction is called in about 2.5 % of runs (one side of a 95 % interval)."
    calls = [evaluate_claim(CLAIM, _values(0.0, noise=0.05, seed=k)).verdict for k in range(300)]
    assert calls.count('reproduced') / len(calls) < 0.06


def test_t_interval_hand_value():
    half = 4.302653 * 0.02 / math.sqrt(3)                                    # t(2) · s_d / √3
    np.testing.assert_allclose(t_interval([0.02, 0.04, 0.06]), (0.04, 0.04 - half, 0.04 + half), rtol=1e-6)
    r = evaluate_claim(CLAIM, {('a', 'exp'): {s: {'m': 0.5 + d} for s, d in enumerate([0.02, 0.04, 0.06])},
                               ('b', 'exp'): {s: {'m': 0.5} for s in range(3)}})
    assert r.verdict == 'inconclusive' and r.resolve.startswith('about 4 seeds') and math.isclose(r.lo, 0.04 - half, rel_tol=1e-6)


def test_non_finite_counted_not_averaged():
    v = _values(0.1, n_seeds=5)
    v[('a', 'exp')][1]['m'] = None; v[('a', 'exp')][2]['m'] = float('nan'); v[('b', 'exp')][3]['m'] = float('inf')
    r = evaluate_claim(CLAIM, v)
    assert r.n_seeds == 2 and sum(r.excluded.values()) == 3 and 'failed or excluded fit (None)' in r.excluded
    assert math.isclose(r.effect, np.mean([v[('a', 'exp')][s]['m'] - v[('b', 'exp')][s]['m'] for s in (0, 4)]))
    one = evaluate_claim(CLAIM, {k: {0: s[0]} for k, s in _values(0.1).items()})
    assert one.verdict == 'inconclusive' and one.resolve.startswith('a second seed') and math.isnan(one.lo)


def test_bootstrap_covers_truth():
    "3 seeds × 20 items, seed offsets dominating: the widened interval covers the true effect at about 95 %."
    rng, hits = np.random.default_rng(3), 0
    for _ in range(100):
        b = {s: rng.normal(0, 0.5, 20) for s in range(3)}
        a = {s: b[s] + 0.2 + rng.normal(0, 0.1) + rng.normal(0, 0.1, 20) for s in range(3)}
        _, lo, hi, _ = hierarchical_bootstrap(a, b, n_boot=200, seed=int(rng.integers(1e9)))
        hits += lo <= 0.2 <= hi
    assert 0.88 <= hits / 100 <= 1.0


def test_bootstrap_through_evaluate():
    rng = np.random.default_rng(0)
    v = {('b', 'g'): {s: {'cnr': 0.4, 'items.cnr': rng.normal(0.4, 0.2, 30)} for s in range(3)}}
    v[('a', 'g')] = {s: {'cnr': 0.9, 'items.cnr': v[('b', 'g')][s]['items.cnr'] + 0.5 + rng.normal(0, 0.02, 30)} for s in range(3)}
    v[('a', 'g')][0]['items.cnr'][0] = np.nan
    r = evaluate_claims([Claim('a > b', 't', 't', 'a', 'b', 'g', 'cnr', items='items.cnr')], v, n_boot=300)[0]
    assert r.verdict == 'reproduced' and r.method.startswith('hierarchical bootstrap') and r.excluded == {'non-finite item values': 1}
    assert '**reproduced**' in claims_table([r]) and len(plot_claims([r]).axes) == 1


@pytest.mark.parametrize('field,claim,msg', [
    ('method', Claim('c', 's', 'p', 'elvis', 'biovil', 'eval_grounding', 'cnr'), "claim 'c': method_b 'biovil' is not available"),
    ('experiment', Claim('c', 's', 'p', 'elvis', 'random', 'eval_zeroshot', 'cnr'), "claim 'c': experiment 'eval_zeroshot' is not available"),
    ('fraction', Claim('c', 's', 'p', 'elvis', 'random', 'eval_transfer', 'x', fraction=0.01), "fraction (of eval_transfer) 0.01 is not available: choose from ['1.0']"),
    ('task', Claim('c', 's', 'p', 'elvis', 'random', 'eval_transfer', 'x', task='rsna'), "task (of eval_transfer) 'rsna' is not available: choose from ['chexpert5']"),
])
def test_bad_specs_before_the_run(field, claim, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[').replace(']', r'\]')):
        validate_claims([claim], ['convirt', 'elvis', 'random'], ['eval_grounding', 'eval_transfer'],
                        fractions={'eval_transfer': [1.0]}, tasks={'eval_transfer': ['chexpert5']})


def test_bad_metric_after_the_run():
    v = _values(0.1)
    with pytest.raises(ValueError, match=r"claim 'typo': metric \(of a in exp\) 'n' is not available: choose from \['m'\]"):
        evaluate_claims([Claim('typo', 't', 't', 'a', 'b', 'exp', 'n')], v)


def test_default_claims_valid_on_the_full_plan():
    validate_claims(CLAIMS, ['convirt', 'gloria', 'elvis', 'random'], ['eval_transfer', 'eval_segmentation', 'eval_grounding', 'eval_locality'],
                    fractions={'eval_transfer': [0.01, 0.1, 1.0], 'eval_segmentation': [0.01, 0.1, 1.0]})
    assert len({c.name for c in CLAIMS}) == len(CLAIMS) >= 15


def test_from_results_json_shapes():
    "results.json-shaped dicts → flatten_results → verdicts; an excluded fit (null) is counted, items feed the bootstrap."
    rng = np.random.default_rng(5)
    def seg(d): return {'experiment': 'eval_segmentation', 'seed': 0, 'table': {'covid': {'frozen': {'0.01': d, '1.0': 0.8}}}}
    def gro(c): return {'cnr': c, 'items': {'id': list('abcdefghij'), 'cnr': list(rng.normal(c, 0.05, 10))}}
    steps = {**{f'seed{s}/elvis/eval_segmentation': seg(0.5 + 0.01 * s) for s in range(3)},
             **{f'seed{s}/random/eval_segmentation': seg(None if s == 2 else 0.2) for s in range(3)},
             **{f'seed{s}/elvis/eval_grounding': gro(0.9) for s in range(3)},
             **{f'seed{s}/convirt/eval_grounding': gro(0.3) for s in range(3)}}
    values = {}
    for key, res in steps.items():
        seed, method, experiment = key.split('/')
        values.setdefault((method, experiment), {})[int(seed[4:])] = flatten_results(res, skip=('seed',))
    seg_claim = Claim('seg', 't', 't', 'elvis', 'random', 'eval_segmentation', 'table.covid.frozen.0.01', fraction=0.01)
    gro_claim = Claim('cnr', 't', 't', 'elvis', 'convirt', 'eval_grounding', 'cnr', items='items.cnr')
    r_seg, r_gro = evaluate_claims([seg_claim, gro_claim], values, n_boot=300)
    assert (r_seg.verdict, r_seg.n_seeds, r_seg.excluded) == ('reproduced', 2, {'failed or excluded fit (None)': 1})
    assert r_gro.verdict == 'reproduced' and r_gro.method.startswith('hierarchical bootstrap over 3 seeds')
    assert math.isclose(r_gro.effect, 0.6, abs_tol=0.05)
    del values[('elvis', 'eval_grounding')][1]['items.cnr']                     # items of one seed missing
    r = evaluate_claim(gro_claim, values)
    assert r.method.startswith('hierarchical bootstrap over 2 seeds')
