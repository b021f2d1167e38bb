"""The committed SynthCXR reference (`data_samples/synth_reference.json`, written by
`elvis_nb.eval.reference.supervised_reference` at the quick profile): every supervised bound clearly above every
chance level of its task (5x200 retrieval included), and segmentation bounds that really segment (not the empty-mask
score). Reads a file: < 1 s after the import. The function itself is tested at smoke size in nbs/56_eval.reference.ipynb."""
import json

import pytest

from elvis_nb.core import repo_root
from elvis_nb.eval.reference import (REFERENCE_METHODS, SUPERVISED_REFERENCE_PATH, SYNTH_TASK_PROTOCOL,
                                     synth_reference_rows, synth_reference_table)

SEG = ('pneumonia', 'covid', 'pneumothorax')
# smallest gap between the bound and the best chance of each metric: a bound that is barely above chance says nothing
MARGIN = {'accuracy': 0.2, 'auroc': 0.2, 'dice': 0.2, 'dice_positive': 0.3, 'cnr': 0.5, 'miou': 0.03, 'peak_in_box': 0.2,
          'prec@10': 0.2}


@pytest.fixture(scope='module')
def ref() -> dict:
    return json.loads((repo_root() / SUPERVISED_REFERENCE_PATH).read_text())


def test_every_task_and_metric(ref):
    expected = ({'chexpert5_accuracy', 'chexpert5_auroc', 'chexpert5_prec@10', 'grounding_cnr', 'grounding_miou', 'grounding_peak_in_box'}
                | {f'{t}_{m}' for t in SEG for m in ('dice', 'dice_positive')})
    assert set(ref) - {'settings'} == expected
    for key, vals in ref.items():
        if key == 'settings': continue
        assert 'supervised' in vals and any(k.startswith('chance') for k in vals), key
        assert set(vals) <= set(REFERENCE_METHODS), key


def test_supervised_above_chance_by_a_margin(ref):
    for key, vals in ref.items():
        if key == 'settings': continue
        metric = key.partition('_')[2]
        chance = max(v for k, v in vals.items() if k.startswith('chance'))
        assert vals['supervised'] > chance + MARGIN[metric], f"{key}: supervised {vals['supervised']} vs chance {chance}"


def test_segmentation_bounds_not_degenerate(ref):
    for task in SEG:
        dice, pos = ref[f'{task}_dice'], ref[f'{task}_dice_positive']
        assert pos['chance_empty'] == 0.0 and pos['supervised'] > 0.5, task             # it segments the positives
        assert dice['supervised'] > max(dice['chance_empty'], dice['chance_whole']) + 0.2, task   # not the trivial 0.5
    assert ref['pneumothorax_dice']['chance_empty'] == 0.5 and ref['pneumonia_dice']['chance_empty'] == 0.25   # empty images: 2 or 1 in 4



def test_retrieval_bound(ref):
    prec = ref['chexpert5_prec@10']
    assert prec['chance'] == 0.2                          # a random ranking on the balanced 5-class set
    assert prec['supervised'] > prec['chance'] + MARGIN['prec@10'], prec
    rows = [r for r in synth_reference_rows() if r['metric'] == 'prec@10']
    assert {r['protocol'] for r in rows} == {'retrieval image->image (5x200)'} and len(rows) == 2


def test_settings_record_the_run(ref):
    st = ref['settings']
    assert (st['profile'], st['size'], st['n_per_split']) == ('quick', 128, 200)
    assert set(st['seconds']) == {'chexpert5', *SEG, 'grounding'}
    assert sum(st['seconds'].values()) < 15 * 60      # the budget of a reference run on one CPU core (~10 min)


def test_rows_and_table(ref):
    rows = synth_reference_rows()
    assert len(rows) == sum(len(v) for k, v in ref.items() if k != 'settings')
    assert {r['dataset'] for r in rows} == {d for _, d in SYNTH_TASK_PROTOCOL.values()}
    table = synth_reference_table()
    assert table.columns[0] == 'supervised upper bound' and len(table) == len(ref) - 1


@pytest.mark.parametrize('task,metric', [(t, m) for t in SEG for m in ('dice', 'dice_positive')])
def test_every_segmentation_task_leaves_room(ref, task, metric):
    "The frozen random encoder at 100 % keeps at least a quarter of the chance-to-bound gap below the supervised bound."
    vals = ref[f'{task}_{metric}']
    chance = max(v for k, v in vals.items() if k.startswith('chance'))
    room = (vals['supervised'] - vals['random_frozen']) / (vals['supervised'] - chance)
    assert room >= 0.25, f"{task} {metric}: random init {vals['random_frozen']} vs bound {vals['supervised']} (chance {chance}): saturated"
