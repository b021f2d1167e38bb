"""SynthCXR ground truth: determinism, zones named by the report, negations, boxes, and label/report/mask agreement.

An independent rule labeller (keywords + negation/uncertainty cues, written here, not in the generator) reads every
report; a location parser reads every finding sentence. Runs a few hundred studies at 64 px (about 10 s).
"""
import re

import numpy as np
import pytest

from elvis_nb.core import CHEXPERT_LABELS, CHEXPERT_5
from elvis_nb.data.synth import (KIND_LABEL, TASKS, SynthClassification, SynthGrounding, SynthPretrain, geometry,
                                 make_study, render, zone_region)

S = 64
KEYS = {'Atelectasis': r'atelectasis', 'Cardiomegaly': r'cardiomegaly|heart is|heart size|cardiac silhouette|cardiomediastinal silhouette',
        'Consolidation': r'consolidation', 'Edema': r'edema', 'Lung Lesion': r'nodul', 'Lung Opacity': r'opacit',
        'Pleural Effusion': r'effusion', 'Pneumonia': r'pneumonia', 'Pneumothorax': r'pneumothorax', 'Fracture': r'fracture'}
NEG, UNC = r'\bno\b|\bnormal\b', r'\bpossible\b|\bmay\b|cannot be excluded|borderline'
ZONE_RE = {'apical': r'\bapex\b|\bapical\b', 'upper': r'\bupper\b', 'middle': r'\bmid\b|\bmiddle\b', 'lower': r'\blower\b',
           'basal': r'\bbases?\b|basilar', 'perihilar': r'perihilar', 'costophrenic': r'costophrenic',
           'retrocardiac': r'retrocardiac', 'peripheral': r'peripheral', 'hemithorax': r'hemithora'}


def rule_labels(text: str) -> dict:
    "CheXpert-style labels read from the text alone: positive beats uncertain beats negative."
    out = {}
    for sent in re.split(r'(?<=\.) ', text.lower()):
        v = 0 if re.search(NEG, sent) else -1 if re.search(UNC, sent) else 1
        for k, pat in KEYS.items():
            if re.search(pat, sent): out[k] = max(out.get(k, v), v) if 1 in (v, out.get(k)) else min(out.get(k, v), v)
    return out


def named_region(sentence: str, g) -> np.ndarray:
    "The union of the zones (on the sides) a sentence names; no zone word = the whole hemithorax."
    s = sentence.lower()
    if re.search(r'heart|cardiac|cardiomegaly', s): return zone_region(g, 'cardiac', None)
    sides = [x for x in ('right', 'left') if re.search(rf'\b{x}\b', s)] or ['right', 'left']
    zones = [z for z, pat in ZONE_RE.items() if re.search(pat, s)] or ['hemithorax']
    return np.any([zone_region(g, z, side) for z in zones for side in sides], axis=0)


def studies():
    yield from (make_study(0, 'pretrain/train', i) for i in range(200))
    for task in TASKS[1:]: yield from (make_study(1, f'{task}/test', i) for i in range(40))


@pytest.fixture(scope='module')
def rendered():
    return [(st, *render(st, S)) for st in studies()]


def test_determinism():
    a, b = SynthPretrain('train', 'smoke', seed=3)[5], SynthPretrain('train', 'smoke', seed=3)[5]
    assert a['text'] == b['text'] and a['image'].numpy().tobytes() == b['image'].numpy().tobytes()
    c = SynthPretrain('train', 'smoke', seed=4)[5]
    assert not np.array_equal(a['image'].numpy(), c['image'].numpy())
    assert make_study(3, 'pretrain/train', 5).patient['ctr'] != make_study(4, 'pretrain/train', 5).patient['ctr']


def test_cache_is_byte_identical(tmp_path):
    ds, dc = SynthGrounding('test', 'smoke', n=3), SynthGrounding('test', 'smoke', n=3, cache=tmp_path)
    for _ in range(2):                                   # first call writes, second reads
        for i in range(3):
            a, b = ds[i], dc[i]
            assert a['image'].numpy().tobytes() == b['image'].numpy().tobytes() and (a['boxes'] == b['boxes']).all()


def test_labels_agree_with_report_and_masks(rendered):
    for st, img, masks, boxes in rendered:
        truth = st.labels
        read = rule_labels(st.text)
        for k, v in read.items(): assert truth[CHEXPERT_LABELS.index(k)] == v, (st.id, k, v, st.text)
        for n, f in enumerate(st.findings):              # a drawn finding: a mask, and a label of its certainty
            assert masks[n].any(), (st.id, f.kind)
            assert truth[CHEXPERT_LABELS.index(KIND_LABEL[f.kind])] == f.certainty or (f.certainty == -1 and truth[CHEXPERT_LABELS.index(KIND_LABEL[f.kind])] == 1)
        drawn = {KIND_LABEL[f.kind] for f in st.findings}
        for k, v in st.label_dict.items():               # a negated finding is not drawn
            if v == 0: assert k not in drawn, (st.id, k)
        assert (truth[CHEXPERT_LABELS.index('No Finding')] == 1) == (not st.findings)


def test_masks_lie_in_named_zone(rendered):
    for st, img, masks, boxes in rendered:
        g = geometry(st.patient, S)
        for s in st.sentences:
            if s.finding is None: continue
            m = masks[s.finding]
            assert not (m & ~named_region(s.text, g)).any(), (st.id, s.text)
            side = st.findings[s.finding].side
            if side in ('right', 'left'):                # patient's right = image left
                assert (np.nonzero(m)[1].mean() < S / 2) == (side == 'right'), (st.id, s.text)


def test_boxes_contain_their_finding(rendered):
    for st, img, masks, boxes in rendered:
        for n in range(len(st.findings)):
            cover = np.zeros((S, S), bool)
            for _, x1, y1, x2, y2 in boxes[boxes[:, 0] == n].astype(int): cover[y1:y2, x1:x2] = True
            assert not (masks[n] & ~cover).any(), st.id


def test_chexpert5_is_balanced_one_positive():
    ds = SynthClassification('test', 'smoke', n=50)
    five = [CHEXPERT_LABELS.index(c) for c in CHEXPERT_5]
    pos = np.stack([ds.study(i).labels[five] for i in range(50)])
    assert ((pos == 1).sum(1) == 1).all() and ((pos == 1).sum(0) == 10).all()


def test_renderer_option_reaches_every_experiment_step_and_the_report():
    "Every SynthCXR experiment takes `renderer`; plan_steps puts it in every step (so in its fingerprint); the report names it."
    from pathlib import Path
    from elvis_nb.reproduce import TASKS as EXPERIMENTS, experiment_parameters, plan_steps, report_markdown
    for e in ('pretrain', *EXPERIMENTS.values()):
        params = experiment_parameters(e)
        assert params['renderer'] == 'cartoon', e
    cartoon, ct = (plan_steps('smoke', ('elvis',), ('retrieval',), renderer=r) for r in ('cartoon', 'ct'))
    assert [s.params.get('renderer') for s in ct[1:]] == ['ct'] * (len(ct) - 1)
    assert all(a.fingerprint() != b.fingerprint() for a, b in zip(cartoon[1:], ct[1:]))
    with pytest.raises(ValueError, match="unknown renderer 'photo'"): plan_steps('smoke', renderer='photo')
    meta = dict(profile='smoke', methods=['elvis'], seeds=[0], data_root='', renderer='ct')
    assert 'renderer `ct`' in report_markdown({}, {}, Path('.'), {**meta, 'renderers_used': ['ct']}) and 'one real chest CT' in report_markdown({}, {}, Path('.'), meta)
    from elvis_nb.cli import build_parser
    assert build_parser().parse_args(['reproduce', '--renderer', 'ct']).renderer == 'ct'
    assert build_parser().parse_args(['reproduce']).renderer == 'cartoon'
    fell_back = report_markdown({}, {}, Path('.'), {**meta, 'renderers_used': ['cartoon']})
    assert 'renderer `cartoon`' in fell_back and 'could not be fetched' in fell_back
    assert build_parser().parse_args(['ablate', '--renderer', 'ct']).renderer == 'ct'
    from elvis_nb.reproduce import papers_markdown          # each renderer's own reference, or a plain statement that it has none
    assert 'SynthCXR reference, renderer `cartoon`' in papers_markdown({}) and 'synth_reference.json' in papers_markdown({})
    assert 'No SynthCXR reference for renderer `ct` is stored' in papers_markdown({}, 'ct')


def test_report_style_reaches_the_steps_that_read_reports_and_the_report():
    "`report_style` is a parameter of exactly the experiments that read reports; plan_steps passes it to them only; the reports name it."
    from pathlib import Path
    from elvis_nb.ablate import ablation_markdown, ablation_steps
    from elvis_nb.reproduce import TASKS as EXPERIMENTS, experiment_parameters, plan_steps, reads_reports, report_markdown
    readers = {e for e in ('pretrain', *EXPERIMENTS.values()) if reads_reports(e)}
    assert readers == {'pretrain', 'eval_retrieval', 'eval_transfer', 'eval_grounding', 'eval_locality'}
    assert all(experiment_parameters(e)['report_style'] == 'template' for e in readers)
    template, indiana = (plan_steps('smoke', ('elvis',), ('retrieval', 'segmentation'), random_baseline=False, report_style=r)
                         for r in ('template', 'indiana'))
    assert [s.params.get('report_style') for s in indiana[1:]] == ['indiana', 'indiana', None]
    assert all('report_style' not in s.params for s in template)            # the default: the steps as they always were
    assert indiana[1].fingerprint() != template[1].fingerprint() and indiana[3].fingerprint() == template[3].fingerprint()
    with pytest.raises(ValueError, match="unknown report_style 'mimic'"): plan_steps('smoke', report_style='mimic')
    steps = ablation_steps('smoke', {'tau_tgt': (1.0,)}, (0,), report_style='indiana')[0]
    assert {s.params.get('report_style') for s in steps if s.experiment == 'pretrain'} == {'indiana'}
    meta = dict(profile='smoke', methods=['elvis'], seeds=[0], data_root='', renderer='cartoon', report_style='indiana')
    assert 'reports `indiana`' in report_markdown({}, {}, Path('.'), meta)
    ab = dict(meta, grid={}, tasks=['grounding'], fraction=0.1, n_variants=0)
    assert 'reports `indiana`' in ablation_markdown(ab, [], {}, {})
    from elvis_nb.cli import build_parser
    for cmd in ('reproduce', 'ablate'):
        assert build_parser().parse_args([cmd, '--report-style', 'indiana']).report_style == 'indiana'
        assert build_parser().parse_args([cmd]).report_style == 'template'
