"""Real-data adapters (elvis_nb.data.real) on the miniature fixtures their chapter writes; seconds in total."""
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from elvis_nb.core import CHEXPERT_5, CHEXPERT_LABELS
from elvis_nb.data import real as R
from elvis_nb.data.transforms import (DataError, boxes_to_input, boxes_to_mask, collate, make_geometry,
                                      map_to_original, read_image, write_dicom)


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    t = tmp_path_factory.mktemp('real')
    mimic = R.write_fixture_mimic(t / 'mimic'); R.write_fixture_ms_cxr(mimic / 'ms-cxr')
    return {'mimic': mimic, 'rsna': R.write_fixture_rsna(t / 'rsna'), 'siim1': R.write_fixture_siim(t / 'siim1', 1),
            'siim2': R.write_fixture_siim(t / 'siim2', 2), 'covid': R.write_fixture_covid(t / 'covid'),
            'chexpert': R.write_fixture_chexpert(t / 'chexpert'), 'tmp': t}


def test_mimic_keeps_and_drops(roots):
    ds = R.MimicCXR('train', 'smoke', data_root=roots['mimic'])
    assert sorted(ds.records.id) == ['d1', 'd2', 'd4']
    assert ds.dropped == Counter({'non-frontal images': 1, 'studies without FINDINGS/IMPRESSION': 1})
    b = collate([ds[i] for i in range(len(ds))])
    assert b['image'].shape == (3, 1, 64, 64) and b['image'].min() >= 0 and b['image'].max() <= 1
    assert b['labels'].shape == (3, len(CHEXPERT_LABELS))
    assert 'Small left pleural effusion. Effusion.' in b['text']
    assert R.MimicCXR('test', 'quick', data_root=roots['mimic'])[0]['image'].shape == (1, 128, 128)


def test_mimic_bad_input_named_or_counted(roots, tmp_path):
    bad = R.write_fixture_mimic(tmp_path / 'm')
    (bad / R.mimic_report_path(10000032, 50000002)).unlink()
    with pytest.raises(DataError, match=r'missing report.*s50000002\.txt'):
        R.MimicCXR('train', 'smoke', data_root=bad)
    with pytest.warns(UserWarning, match='skipped 1 item'):
        ds = R.MimicCXR('train', 'smoke', data_root=bad, on_error='skip')
    assert sorted(ds.records.id) == ['d1', 'd4'] and ds.skipped['missing report'] == 1
    pd.read_csv(bad / 'mimic-cxr-2.0.0-metadata.csv').drop(columns='ViewPosition').to_csv(bad / 'mimic-cxr-2.0.0-metadata.csv', index=False)
    with pytest.raises(DataError, match=r"metadata\.csv: missing column\(s\) \['ViewPosition'\]"):
        R.MimicCXR('train', 'smoke', data_root=bad, on_error='skip')


def test_unreadable_image_per_item(roots, tmp_path):
    bad = R.write_fixture_mimic(tmp_path / 'm')
    (bad / R.mimic_image_path(10000032, 50000002, 'd2')).write_bytes(b'garbage')
    ds = R.MimicCXR('train', 'smoke', data_root=bad)                      # existence is checked, decoding is per item
    i = ds.records.index[ds.records.id == 'd2'][0]
    with pytest.raises(DataError, match=r'unreadable image .*d2\.jpg'):
        ds[i]
    ds = R.MimicCXR('train', 'smoke', data_root=bad, on_error='skip')
    with pytest.warns(UserWarning, match='unreadable item'):
        assert ds[i]['id'] != 'd2'                                        # the next readable item instead
    assert ds.skipped['unreadable item'] == 1


def test_ms_cxr_grouping_and_round_trip(roots):
    ds = R.MSCXR('all', 'smoke', data_root=roots['mimic'])
    it = next(ds[i] for i in range(len(ds)) if ds.records.id[i].startswith('d1'))
    assert it['boxes'].shape == (2, 4) and it['orig_size'] == (40, 32)
    # box → input → painted → mapped back lands on the original box (edge pixels aside)
    back = map_to_original(boxes_to_mask(it['boxes'], (64, 64)).float(), it['geometry'], mode='nearest')
    truth = boxes_to_mask(it['orig_boxes'], it['orig_size']).float()
    assert (back != truth).float().mean() < 0.05


def test_rsna_split_sizes_mask_and_fractions(roots):
    sizes = [len(R.RSNAPneumonia(s, 'smoke', data_root=roots['rsna'])) for s in ('train', 'val', 'test')]
    assert sizes == [6, 2, 2]
    g = R.RSNAPneumonia('all', 'smoke', data_root=roots['rsna'])
    it = g[int(np.flatnonzero(g.records.id == 'pt0')[0])]
    assert it['mask'].sum().item() == 16 * 16 + 20 * 8                    # two boxes, their union
    a = set(R.RSNAPneumonia('train', 'smoke', data_root=roots['rsna'], fraction=0.34, seed=3).records.id)
    assert a == set(R.RSNAPneumonia('train', 'smoke', data_root=roots['rsna'], fraction=0.34, seed=3).records.id)
    assert len(a) == 2


def test_siim_both_stages_decode_the_same(roots):
    d1 = R.SIIMPneumothorax('all', 'smoke', data_root=roots['siim1'])
    d2 = R.SIIMPneumothorax('all', 'smoke', data_root=roots['siim2'])
    assert (d1.convention, d2.convention) == ('relative', 'absolute')
    assert list(d1.records.id) == list(d2.records.id)
    for i in range(len(d1)):
        assert torch.equal(d1[i]['mask'], d2[i]['mask'])
    truth = R.fixture_siim_masks()
    i0 = int(np.flatnonzero(d1.records.id == '1.2.276.0.0')[0])
    assert d1[i0]['mask'].sum().item() == 4 * np.logical_or.reduce(truth['1.2.276.0.0']).sum()   # 32² → 64²


@pytest.mark.parametrize('conv', ['relative', 'absolute'])
def test_rle_round_trip(conv):
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (4, 9), (16, 16)]:
        m = rng.random(shape) < 0.4
        assert np.array_equal(R.rle_decode(R.rle_encode(m, conv), shape, conv), m)


def test_covid_split_by_patient_and_lovt_files(roots, tmp_path):
    parts = {s: R.COVIDRural(s, 'smoke', data_root=roots['covid']) for s in ('train', 'val', 'test')}
    pts = {s: set(p.records.group) for s, p in parts.items()}
    assert not (pts['train'] & pts['val'] or pts['train'] & pts['test'] or pts['val'] & pts['test'])
    assert sum(len(p) for p in parts.values()) == 7
    lovt = R.write_fixture_covid(tmp_path / 'c', lovt_split=True)
    assert len(R.COVIDRural('train', 'smoke', data_root=lovt)) == 5


def test_chexpert_5x200_and_8x200(roots):
    five = R.load_task_dataset('classification', 'test', 'smoke', roots['chexpert'], n_per_class=2)
    assert sorted(five.records.category.unique()) == sorted(CHEXPERT_5) and len(five) == 10
    assert list(five.records.id) == list(R.CheXpertImages('test', 'smoke', data_root=roots['chexpert'], n_per_class=2).records.id)
    cand = R.load_task_dataset('retrieval', 'test', 'smoke', roots['chexpert'])
    assert cand.table == '8x200' and len(cand) == 16
    inner = R.load_task_dataset('classification', 'test', 'smoke', roots['chexpert'] / 'CheXpert-v1.0-small', n_per_class=2)
    assert list(inner.records.id) == list(five.records.id)


def test_load_task_dataset_routes_every_task(roots):
    want = {'pretrain': ('mimic', 'MimicCXR'), 'grounding': ('mimic', 'MSCXR'),
            'segmentation_pneumonia': ('rsna', 'RSNAPneumonia'), 'segmentation_pneumothorax': ('siim1', 'SIIMPneumothorax'),
            'segmentation_covid': ('covid', 'COVIDRural'), 'retrieval': ('chexpert', 'CheXpertImages')}
    for task, (root, cls) in want.items():
        split = 'test' if task in ('grounding', 'retrieval') else 'train'
        assert type(R.load_task_dataset(task, split, 'smoke', roots[root])).__name__ == cls
    with pytest.raises(DataError, match="needs rsna, but"):
        R.load_task_dataset('segmentation_pneumonia', 'train', 'smoke', roots['covid'])
    with pytest.raises(ValueError, match='unknown task'):
        R.load_task_dataset('detection', 'train', 'smoke', roots['rsna'])


def test_dicom_monochrome1_and_dataloader(roots, tmp_path):
    px = np.array([[0, 10], [20, 40]], np.uint16)
    a, b = read_image(write_dicom(tmp_path / 'a.dcm', px)), read_image(write_dicom(tmp_path / 'b.dcm', px, 'MONOCHROME1'))
    assert np.allclose(a + b, 1)
    dl = DataLoader(R.RSNAPneumonia('train', 'smoke', data_root=roots['rsna']), batch_size=4, collate_fn=collate)
    batch = next(iter(dl))
    assert batch['image'].shape == (4, 1, 64, 64) and batch['mask'].shape == (4, 1, 64, 64)


def test_rsna_boxes_in_a_larger_space_are_rescaled(tmp_path):
    small = R.RSNAPneumonia('all', 'smoke', data_root=R.write_fixture_rsna(tmp_path / 'a'))
    big = R.RSNAPneumonia('all', 'smoke', data_root=R.write_fixture_rsna(tmp_path / 'b', box_scale=16), box_space=(1024, 1024))
    for i in range(len(small)):
        assert torch.equal(small[i]['mask'], big[i]['mask'])


def test_reads_synthcxr_export(tmp_path):
    """The SynthCXR exporter writes the published layouts; every adapter reads them back consistently."""
    from elvis_nb.data.synth import export_layouts
    exp = export_layouts(tmp_path / 'x', n=6, size=64, n_eval=6)
    for task, folder in [('pretrain', 'mimic-cxr-jpg'), ('grounding', 'mimic-cxr-jpg'), ('segmentation_pneumonia', 'rsna-pneumonia'),
                         ('segmentation_pneumothorax', 'siim-acr-pneumothorax'), ('segmentation_covid', 'covid-rural')]:
        ds = R.load_task_dataset(task, 'all', 'smoke', exp / folder)
        assert ds.skipped == Counter()
        b = collate([ds[i] for i in range(len(ds))])
        assert b['image'].shape == (len(ds), 1, 64, 64)
    rsna = R.RSNAPneumonia('all', 'smoke', data_root=exp / 'rsna-pneumonia')
    assert [bool(rsna[i]['mask'].any()) for i in range(len(rsna))] == [len(b) > 0 for b in rsna.records.boxes]
