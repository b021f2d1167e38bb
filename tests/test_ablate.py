"""`elvis-nb ablate` under `smoke`: one variant per axis through the real pipeline (pre-training with the variant's
option, the evaluations, the comparisons with ELVIS and GLoRIA, the report); a bad grid fails before anything runs;
and the statistics flag a constructed real effect and not a constructed null."""
import json
from dataclasses import fields

import numpy as np
import pytest

from elvis_nb.ablate import (AXES, COMPARATORS, GRIDS, TARGET_COLUMNS, ablate, ablation_claims, axis_changes, change,
                             effect_rows, plan_variants, variant_row)
from elvis_nb.eval.claims import evaluate_claims
from elvis_nb.models.methods import ElvisConfig

KNOWN = {f.name for f in fields(ElvisConfig)}
ONE_PER_AXIS = {'tau_tgt': 1.0, 'tau_src': 1.0, 'target': 'onehot', 'target_source': 'ema', 'element_weights': 'attention',
                'mu': 2.0, 'attention': 'gloria', 'text_level': 'sentences', 'init': 'warm'}   # a non-default value of each axis
TASKS = ('grounding',)   # trimmed to the cheapest evaluation (smoke's segmentation fits are excluded, collapsed, anyway)


def test_every_axis_sets_fields_of_the_config():
    for a, axis in AXES.items(): assert {*axis.fields, *axis.also} <= KNOWN, a


def test_one_value_per_axis_covers_the_default_grid():
    assert set(ONE_PER_AXIS) == set(GRIDS['default'])
    assert all(v in GRIDS['default'][a] and v != AXES[a].default for a, v in ONE_PER_AXIS.items())


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('ablate')
    grid = {a: (v,) for a, v in ONE_PER_AXIS.items()}
    log = []
    res = ablate(out, 'smoke', grid, seeds=(0,), device='cpu', tasks=TASKS, log=lambda *a, **k: log.append(' '.join(map(str, a))))
    return out, res, log


@pytest.mark.parametrize('axis', list(ONE_PER_AXIS))
def test_variant_pretrained_with_its_option_and_compared(run, axis):
    out, res, _ = run
    if axis in res['skipped_axes']:                                   # the warm encoders: module or wheel unavailable
        assert axis == 'init' and res['skipped_axes'][axis] in (out / 'ablation.md').read_text()
        pytest.skip(f"axis {axis} skipped: {res['skipped_axes'][axis]}")
    row = variant_row(axis, ONE_PER_AXIS[axis])
    options = json.loads((out / 'seed0' / row / 'pretrain' / 'model' / 'config.json').read_text())['options']
    for f in AXES[axis].fields: assert options[f] == ONE_PER_AXIS[axis], (f, options[f])   # the option reached the method
    mine = [e for e in res['effects'] if e['row'] == row]
    assert {e['versus'] for e in mine} == set(COMPARATORS) and len(mine) == 2         # CNR, against each comparator
    assert all(np.isfinite(e['effect']) and e['change'] == 'no interval' for e in mine), mine   # one seed: no interval
    assert res['changes'][axis] == {'grounding CNR': 'n/a'}


def test_report_and_results(run):
    out, res, log = run
    md, html = (out / 'ablation.md').read_text(), (out / 'ablation.html').read_text()
    assert not (out / 'report.md').exists() and not (out / 'results.json').exists()   # a reproduce folder's report is left alone
    assert md.index('## Summary') < md.index('## The axes') < md.index('## Effects, axis by axis')
    ran = sorted({v['axis'] for v in res['variants'].values()})
    assert ran and all(f'- **{a}** (default' in md and (out / f'axis_{a}.png').exists() for a in ran)
    assert all(f'- **{a}** (default' in md for a in res['skipped_axes'])
    assert '### Against the default ELVIS (A − elvis)' in md and '### Against GLoRIA (A − gloria)' in md
    assert '![target dynamics](target_dynamics.png)' in md and (out / 'target_dynamics.png').exists()
    assert html.count('data:image/png;base64,') == md.count('![')
    assert res['meta']['n_variants'] == len(ran) == len(res['variants'])
    assert json.loads((out / 'ablation.json').read_text())['meta']['grid'] == res['meta']['grid']
    assert any(line.startswith('elvis_nb ablate: ') for line in log)


def test_target_diagnostics_logged_by_every_elvis_pretraining(run):
    out, res, _ = run
    import pandas as pd
    for row in ('elvis', *res['variants']):
        df = pd.read_csv(out / 'seed0' / row / 'pretrain' / 'metrics.csv')
        train = df[df['split'] == 'train']
        assert set(TARGET_COLUMNS) <= set(df.columns) and train[list(TARGET_COLUMNS)].notna().all().all(), row
    onehot = variant_row('target', 'onehot')
    if onehot in res['variants']:                                      # the one-hot target: mass 1 on itself, entropy 0
        df = pd.read_csv(out / 'seed0' / onehot / 'pretrain' / 'metrics.csv')
        assert np.allclose(df[df['split'] == 'train']['target_diag_mass_image'], 1.0)


@pytest.mark.parametrize('grid, message', [
    ({'tau': (1.0,)}, "unknown axis 'tau'"),
    ({'target': ('diagonal',)}, "axis 'target' has no value 'diagonal'"),
    ({'tau_tgt': (0.1, 0.0)}, 'tau_tgt must be positive'),
    ({'tau_src': (-0.3,)}, 'tau_src must be positive'),
    ({'mu': ('heavy',)}, "axis 'mu' takes a number"),
    ({'target_momentum': (1.5,)}, 'target_momentum'),
    ({'target_momentum': (-0.1,)}, 'target_momentum'),
])
def test_bad_grid_fails_before_anything_runs(tmp_path, grid, message):
    with pytest.raises(ValueError, match=None) as e: ablate(tmp_path / 'run', 'smoke', grid, seeds=(0,), device='cpu')
    assert message in str(e.value), str(e.value)
    assert not (tmp_path / 'run').exists(), 'nothing may run (or be created) before the grid is checked'


def test_every_default_value_is_the_configs_default():
    for name, axis in AXES.items():   # an axis with `also` (the EMA momentum) states its default relative to those fields
        if axis.also: continue
        for f in axis.fields: assert ElvisConfig.__dataclass_fields__[f].default == axis.default, (name, f)
    assert plan_variants({a: (AXES[a].default,) for a in ('tau_tgt', 'target', 'mu')}, 'smoke')[0] == {}   # defaults are `elvis`


def test_statistics_flag_a_real_effect_and_not_a_null():
    rng = np.random.default_rng(0)
    base = {s: rng.normal(1.0, 0.3, 40) for s in range(3)}            # per-phrase CNR of the default ELVIS, seed by seed
    shift = {'elvis': 0.0, 'gloria': -0.5, 'elvis-tau_tgt-1.0': 0.3, 'elvis-mu-2.0': 0.0}
    values = {(row, 'eval_grounding'): {s: {'cnr': float((items := base[s] + d + rng.normal(0, 0.05, 40)).mean()),
                                             'items.cnr': items} for s in base} for row, d in shift.items()}
    rows = ['elvis', 'elvis-tau_tgt-1.0', 'elvis-mu-2.0']
    claims = ablation_claims(rows, 0.01, tasks=('grounding',))
    judged = evaluate_claims(claims, values)
    got = {r.claim.name: change(r) for r in judged}
    assert got['elvis-tau_tgt-1.0 vs elvis: grounding CNR'] == 'higher'
    assert got['elvis-mu-2.0 vs elvis: grounding CNR'] == 'within seed noise'
    assert got['elvis vs gloria: grounding CNR'] == got['elvis-mu-2.0 vs gloria: grounding CNR'] == 'higher'
    assert all('hierarchical bootstrap' in r.method for r in judged)   # CNR: seeds and phrases
    variants, _ = plan_variants({'tau_tgt': (1.0,), 'mu': (2.0,)}, 'smoke')
    changes = axis_changes(effect_rows(judged, variants), {'tau_tgt': (), 'mu': ()})
    assert changes == {'tau_tgt': {'grounding CNR': 'yes'}, 'mu': {'grounding CNR': 'no'}}
