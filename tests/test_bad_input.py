"""Bad input never gives a silent wrong result: one table of malformed fixtures in the real layouts (each one change
to a valid fixture written by elvis_nb.data.real), each row asserting its exact outcome, plus property-based tests."""
import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from elvis_nb.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from elvis_nb.core import CHEXPERT_5, CHEXPERT_LABELS
from elvis_nb.data import real as R
from elvis_nb.data.transforms import DataError, boxes_to_mask, collate, split_sentences, write_dicom

SIIM = '1.2.276.0.'                                  # the SIIM fixture's ImageId prefix
COVID_IDS = [f'COVID-19-AR-1640650{p}_01-0{d}-2012-XR' for p in range(5) for d in range(1, 2 + p % 2)]


# ---------------------------------------------------------------- the fixtures (written once) and their editors
@pytest.fixture(scope='module')
def base(tmp_path_factory):
    t = tmp_path_factory.mktemp('base')
    mimic = R.write_fixture_mimic(t / 'mimic'); R.write_fixture_ms_cxr(mimic / 'ms-cxr')
    out = {'mimic': mimic, 'rsna': R.write_fixture_rsna(t / 'rsna'), 'siim1': R.write_fixture_siim(t / 'siim1', 1),
           'siim2': R.write_fixture_siim(t / 'siim2', 2), 'covid': R.write_fixture_covid(t / 'covid', lovt_split=True),
           'chexpert': R.write_fixture_chexpert(t / 'chexpert')}
    from elvis_nb.models.methods import build_method
    torch.manual_seed(0)
    out['method'] = build_method('convirt', 'smoke').save_pretrained(t / 'method')
    return out


def edit(path: Path, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    "Rewrite CSV `path` (text kept as text) through `fn`."
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def cell(row: int, col: str, value: str):
    "An editor setting one cell."
    def fn(df): df.loc[row, col] = value; return df
    return fn


def repeat(row: int, **changes):
    "An editor appending a copy of `row` (with `changes`)."
    def fn(df):
        extra = df.iloc[[row]].copy()
        for k, v in changes.items(): extra[k] = v
        return pd.concat([df, extra], ignore_index=True)
    return fn


def mimic_csv(root, t): return root / f'mimic-cxr-2.0.0-{t}.csv' if t == 'metadata' else root / f'mimic-cxr-2.0.0-{t}.csv.gz'
def ms_csv(root): return root / 'ms-cxr' / 'MS_CXR_Local_Alignment_v1.1.0.csv'
def rsna_csv(root): return root / 'stage_2_train_labels.csv'
def siim_csv(root, stage): return root / ('train-rle.csv' if stage == 1 else 'stage_2_train.csv')
def chexpert_csv(root): return root / 'CheXpert-v1.0-small' / 'train.csv'
def ids(ds): return list(ds.records.id)


def write_5x200(root, fn=lambda df: df):
    "A GLoRIA-style chexpert_5x200.csv from the fixture's frontal single-label rows of the five classes."
    df = pd.read_csv(chexpert_csv(root))
    df = df[(df['Frontal/Lateral'] == 'Frontal') & df[list(CHEXPERT_5)].eq(1).any(axis=1)].fillna(0.0)
    fn(df.reset_index(drop=True)).to_csv(root / 'chexpert_5x200.csv', index=False)


def siim_mask_ok(ds, iid):
    "The decoded mask of `iid` is the fixture's truth (OR of its instances; 32² fixture → 64² input)."
    truth = np.logical_or.reduce(R.fixture_siim_masks()[iid]) if R.fixture_siim_masks()[iid] else np.zeros((32, 32), bool)
    m = ds[ids(ds).index(iid)]['mask'][0]
    return torch.equal(m, torch.as_tensor(truth).repeat_interleave(2, 0).repeat_interleave(2, 1).float())


def rsna_pt0_ok(ds):
    return ds[ids(ds).index('pt0')]['mask'].sum().item() == 16 * 16 + 20 * 8      # the union of pt0's two boxes


# ---------------------------------------------------------------- outcomes
@dataclass
class Error:            # with on_error='raise' (and, for a table-level error, also 'skip'): this class, these words
    cls: type
    words: tuple

@dataclass
class Skip:             # on_error='raise': DataError with `words`; on_error='skip': counted once as `kind`, then `check`
    kind: str
    words: tuple
    check: Callable | None = None
    n: int = 1

@dataclass
class Valid:            # read without error or skip, and read correctly
    check: Callable


def E(cls, *words): return Error(cls, words)
def S(kind, *words, check=None, n=1): return Skip(kind, words, check, n)
def V(check): return Valid(check)


def mimic(split='train'): return lambda root, on_error: R.MimicCXR(split, 'smoke', data_root=root, on_error=on_error)
def mscxr(split='all'): return lambda root, on_error: R.MSCXR(split, 'smoke', data_root=root, on_error=on_error)
def rsna(split='all', **kw): return lambda root, on_error: R.RSNAPneumonia(split, 'smoke', data_root=root, on_error=on_error, **kw)
def siim(): return lambda root, on_error: R.SIIMPneumothorax('all', 'smoke', data_root=root, on_error=on_error)
def covid(split='train'): return lambda root, on_error: R.COVIDRural(split, 'smoke', data_root=root, on_error=on_error)
def chexpert(table='5x200', n=2): return lambda root, on_error: R.CheXpertImages('test', 'smoke', data_root=root, on_error=on_error, table=table, n_per_class=n)


def garbage(path): Path(path).write_bytes(b'not an image at all')


# ---------------------------------------------------------------- the table: (id, fixture, change, load, outcome)
CASES = [
    # MIMIC-CXR-JPG: split, metadata and label CSVs; reports; images
    ('mimic-split-repeated-row', 'mimic', lambda r: edit(mimic_csv(r, 'split'), repeat(2)), mimic(),
     S('duplicate row', 'split.csv.gz row 9', "dicom_id = 'd2' repeats row 4", check=lambda ds: ids(ds).count('d2') == 1)),
    ('mimic-id-in-two-splits', 'mimic', lambda r: edit(mimic_csv(r, 'split'), repeat(2, split='test')), mimic('all'),
     S('duplicate row', 'split.csv.gz row 9', "'d2' repeats row 4", check=lambda ds: ids(ds).count('d2') == 1)),
    ('mimic-study-id-not-a-number', 'mimic', lambda r: edit(mimic_csv(r, 'split'), cell(2, 'study_id', 'abc')), mimic(),
     S('bad value', "split.csv.gz row 4 (dicom_id 'd2'): study_id = 'abc' is not a finite number", check=lambda ds: 'd2' not in ids(ds))),
    ('mimic-study-id-not-an-integer', 'mimic', lambda r: edit(mimic_csv(r, 'split'), cell(2, 'study_id', '50000002.5')), mimic(),
     S('bad value', "study_id = 50000002.5 is not an integer")),
    ('mimic-subject-id-empty', 'mimic', lambda r: edit(mimic_csv(r, 'split'), cell(2, 'subject_id', '')), mimic(),
     S('missing value', "split.csv.gz row 4 (dicom_id 'd2'): subject_id = nan is empty")),
    ('mimic-dicom-id-empty', 'mimic', lambda r: edit(mimic_csv(r, 'split'), cell(2, 'dicom_id', '')), mimic(),
     S('missing value', "split.csv.gz row 4", "dicom_id = nan is empty")),
    ('mimic-unknown-split-name', 'mimic', lambda r: edit(mimic_csv(r, 'split'), cell(2, 'split', 'trian')), mimic(),
     S('bad value', "split = 'trian' is not one of")),
    ('mimic-metadata-repeated-row', 'mimic', lambda r: edit(mimic_csv(r, 'metadata'), repeat(0)), mimic(),
     S('duplicate row', "metadata.csv row 9 (dicom_id 'd1'): dicom_id = 'd1' repeats row 2", check=lambda ds: ids(ds).count('d1') == 1)),
    ('mimic-metadata-no-view-column', 'mimic', lambda r: edit(mimic_csv(r, 'metadata'), lambda d: d.drop(columns='ViewPosition')), mimic(),
     E(DataError, "metadata.csv: missing column(s) ['ViewPosition']")),
    ('mimic-labels-repeated-row', 'mimic', lambda r: edit(mimic_csv(r, 'chexpert'), repeat(1)), mimic(),
     S('duplicate row', 'chexpert.csv.gz row 8 (study_id 50000002)', 'repeats row 3', check=lambda ds: ids(ds) == ['d1', 'd2', 'd4'])),
    ('mimic-label-out-of-domain', 'mimic', lambda r: edit(mimic_csv(r, 'chexpert'), cell(1, 'Cardiomegaly', '2')), mimic(),
     S('bad value', "chexpert.csv.gz row 3 (study_id 50000002): Cardiomegaly = 2.0 is not one of [1.0, 0.0, -1.0]",
       check=lambda ds: 'd2' not in ids(ds))),
    ('mimic-label-text', 'mimic', lambda r: edit(mimic_csv(r, 'chexpert'), cell(1, 'Cardiomegaly', 'yes')), mimic(),
     S('bad value', "Cardiomegaly = 'yes' is not one of")),
    ('mimic-label-uncertain-is-valid', 'mimic', lambda r: edit(mimic_csv(r, 'chexpert'), cell(1, 'Cardiomegaly', '-1.0')), mimic(),
     V(lambda ds: ds[ids(ds).index('d2')]['labels'][CHEXPERT_LABELS.index('Cardiomegaly')].item() == -1)),
    ('mimic-report-missing', 'mimic', lambda r: (r / R.mimic_report_path(10000032, 50000002)).unlink(), mimic(),
     S('missing report', 's50000002.txt', check=lambda ds: 'd2' not in ids(ds))),
    ('mimic-report-without-sections', 'mimic', lambda r: (r / R.mimic_report_path(11000011, 50000004)).write_text('no headers here'), mimic(),
     S('report without sections', 's50000004.txt')),
    ('mimic-report-not-utf8', 'mimic', lambda r: (r / R.mimic_report_path(10000032, 50000002)).write_bytes(b'\n FINDINGS:  Caf\xe9 normal.\n'),
     mimic(), S('bad encoding', 's50000002.txt', 'not UTF-8')),
    ('mimic-image-missing', 'mimic', lambda r: (r / R.mimic_image_path(10000032, 50000002, 'd2')).unlink(), mimic(), S('missing file', 'd2.jpg')),
    ('mimic-image-undecodable', 'mimic', lambda r: garbage(r / R.mimic_image_path(10000032, 50000002, 'd2')), mimic(),
     S('unreadable item', 'unreadable image', 'd2.jpg', check=lambda ds: 'd2' not in {ds[i]['id'] for i in range(len(ds))})),
    ('mimic-image-float-pixels', 'mimic', lambda r: Image.fromarray(np.ones((40, 32), np.float32)).save(
        r / R.mimic_image_path(10000032, 50000002, 'd2'), format='TIFF'), mimic(), S('unreadable item', 'd2.jpg', "unsupported pixel format (PIL mode 'F')")),
    ('mimic-split-csv-missing', 'mimic', lambda r: mimic_csv(r, 'split').unlink(), mimic(), E(DataError, "expected one of ['mimic-cxr-2.0.0-split.csv'")),
    ('mimic-split-csv-corrupt', 'mimic', lambda r: mimic_csv(r, 'split').write_bytes(b'\x1f\x8b\x08garbage'), mimic(),
     E(DataError, 'unreadable CSV', 'split.csv.gz')),
    ('mimic-metadata-not-utf8', 'mimic', lambda r: mimic_csv(r, 'metadata').write_bytes(mimic_csv(r, 'metadata').read_bytes() + b'd9,1,1,P\xe9,40,32\n'),
     mimic(), E(DataError, 'unreadable CSV', 'metadata.csv', 'UnicodeDecodeError')),
    ('mimic-view-empty-is-filtered', 'mimic', lambda r: edit(mimic_csv(r, 'metadata'), cell(2, 'ViewPosition', '')), mimic(),
     V(lambda ds: ids(ds) == ['d1', 'd4'] and ds.dropped['non-frontal images'] == 2)),
    # MS-CXR boxes
    ('mscxr-nan-box', 'mimic', lambda r: edit(ms_csv(r), cell(1, 'x', '')), mscxr(),
     S('missing value', "MS_CXR_Local_Alignment_v1.1.0.csv row 3 (dicom_id 'd1'): x = nan is empty",
       check=lambda ds: 'small left effusion' not in set(ds.records.label_text))),
    ('mscxr-box-not-a-number', 'mimic', lambda r: edit(ms_csv(r), cell(1, 'x', 'abc')), mscxr(), S('bad value', "x = 'abc' is not a finite number")),
    ('mscxr-box-infinite', 'mimic', lambda r: edit(ms_csv(r), cell(1, 'h', 'inf')), mscxr(), S('bad value', "h = inf is not a finite number")),
    ('mscxr-zero-width', 'mimic', lambda r: edit(ms_csv(r), cell(1, 'w', '0')), mscxr(), S('box outside the image', 'row 3 (d1): box x=40, y=40, w=0')),
    ('mscxr-negative-y', 'mimic', lambda r: edit(ms_csv(r), cell(2, 'y', '-5')), mscxr(), S('box outside the image', 'row 4 (d2)', 'y=-5')),
    ('mscxr-box-past-width', 'mimic', lambda r: edit(ms_csv(r), cell(1, 'w', '500')), mscxr(), S('box outside the image', 'w=500', 'not inside 64×80')),
    ('mscxr-repeated-row', 'mimic', lambda r: edit(ms_csv(r), repeat(2)), mscxr(),
     S('duplicate row', "row 6 (dicom_id 'd2')", check=lambda ds: ds.records.boxes[list(ds.records.dicom_id).index('d2')].shape == (1, 4))),
    ('mscxr-image-width-empty', 'mimic', lambda r: edit(ms_csv(r), cell(3, 'image_width', '')), mscxr(), S('missing value', 'image_width = nan is empty')),
    ('mscxr-unknown-split', 'mimic', lambda r: edit(ms_csv(r), cell(3, 'split', 'dev')), mscxr(), S('bad value', "split = 'dev' is not one of")),
    ('mscxr-no-phrase-column', 'mimic', lambda r: edit(ms_csv(r), lambda d: d.drop(columns='label_text')), mscxr(),
     E(DataError, "missing column(s) ['label_text']")),
    ('mscxr-image-missing', 'mimic', lambda r: (r / R.mimic_image_path(13000033, 50000006, 'd6')).unlink(), mscxr(), S('missing file', 'd6.jpg')),
    ('mscxr-v1.0-has-no-train-split', 'mimic', lambda r: edit(ms_csv(r), lambda d: d.drop(columns='split')), mscxr('train'),
     E(DataError, "has no 'split' column")),
    ('mscxr-numbers-as-decimals-are-valid', 'mimic', lambda r: edit(ms_csv(r), cell(0, 'x', '10.0')), mscxr(),
     V(lambda ds: ds.records.boxes[list(ds.records.label_text).index('small left effusion')].shape == (2, 4))),
    # RSNA boxes
    ('rsna-nan-box', 'rsna', lambda r: edit(rsna_csv(r), cell(1, 'x', '')), rsna(),
     S('missing value', "stage_2_train_labels.csv row 3 (patientId 'pt0'): x = nan is empty", check=lambda ds: 'pt0' not in ids(ds))),
    ('rsna-box-not-a-number', 'rsna', lambda r: edit(rsna_csv(r), cell(3, 'width', 'wide')), rsna(), S('bad value', "width = 'wide' is not a finite number")),
    ('rsna-target-out-of-domain', 'rsna', lambda r: edit(rsna_csv(r), cell(3, 'Target', '2')), rsna(),
     S('bad value', "row 5 (patientId 'pt2'): Target = 2 is not one of [0, 1]", check=lambda ds: 'pt2' not in ids(ds))),
    ('rsna-target-text', 'rsna', lambda r: edit(rsna_csv(r), cell(3, 'Target', 'yes')), rsna(), S('bad value', "Target = 'yes' is not one of")),
    ('rsna-repeated-box', 'rsna', lambda r: edit(rsna_csv(r), repeat(0)), rsna(),
     S('duplicate row', "row 13 (patientId 'pt0')", 'repeats row 2', check=rsna_pt0_ok)),
    ('rsna-negative-row-beside-boxes', 'rsna', lambda r: edit(rsna_csv(r), repeat(2, patientId='pt0')), rsna(),
     S('bad value', "(patientId 'pt0'): Target = 0 but the patient also has Target = 1 rows", check=lambda ds: 'pt0' not in ids(ds))),
    ('rsna-repeated-negative', 'rsna', lambda r: edit(rsna_csv(r), repeat(2)), rsna(), S('duplicate row', "row 13 (patientId 'pt1')")),
    ('rsna-negative-width', 'rsna', lambda r: edit(rsna_csv(r), cell(3, 'width', '-16')), rsna(), S('box outside the image', 'w=-16')),
    ('rsna-box-past-1024', 'rsna', lambda r: edit(rsna_csv(r), cell(3, 'x', '2000')), rsna(), S('box outside the image', 'x=2000', 'not inside 1024×1024')),
    ('rsna-patient-id-empty', 'rsna', lambda r: edit(rsna_csv(r), cell(3, 'patientId', '')), rsna(), S('missing value', 'row 5', 'patientId = nan is empty')),
    ('rsna-dicom-missing', 'rsna', lambda r: (r / 'stage_2_train_images' / 'pt4.dcm').unlink(), rsna(), S('missing file', 'pt4.dcm')),
    ('rsna-dicom-undecodable', 'rsna', lambda r: garbage(r / 'stage_2_train_images' / 'pt4.dcm'), rsna(), S('unreadable item', 'pt4.dcm')),
    ('rsna-dicom-multiframe', 'rsna', lambda r: write_dicom(r / 'stage_2_train_images' / 'pt4.dcm', np.zeros((2, 64, 64), np.uint16)),
     rsna(), S('unreadable item', 'pt4.dcm')),
    ('rsna-box-past-the-real-image', 'rsna', lambda r: edit(rsna_csv(r), cell(3, 'x', '60')), rsna(), S('unreadable item', 'pt2.dcm', 'outside the 64×64 image')),
    ('rsna-no-target-column', 'rsna', lambda r: edit(rsna_csv(r), lambda d: d.drop(columns='Target')), rsna(), E(DataError, "missing column(s) ['Target']")),
    ('rsna-decimal-box-is-valid', 'rsna', lambda r: edit(rsna_csv(r), cell(0, 'x', '16.0')), rsna(), V(rsna_pt0_ok)),
    ('rsna-fraction-zero', 'rsna', lambda r: None, rsna(fraction=0.0), E(ValueError, 'fraction must be in (0, 1], got 0.0')),
    ('rsna-fraction-above-one', 'rsna', lambda r: None, rsna(fraction=1.5), E(ValueError, 'fraction must be in (0, 1], got 1.5')),
    ('rsna-fraction-nan', 'rsna', lambda r: None, rsna(fraction=float('nan')), E(ValueError, 'fraction must be in (0, 1], got nan')),
    ('rsna-fraction-half-is-nested', 'rsna', lambda r: None, rsna(split='train', fraction=0.5),
     V(lambda ds: len(ds) == 3 and set(ids(ds)) < set(ids(R.RSNAPneumonia('train', 'smoke', data_root=ds.data_root))))),
    # SIIM-ACR RLE (stage 1: relative, ' EncodedPixels'; stage 2: absolute)
    ('siim1-token-not-a-number', 'siim1', lambda r: edit(siim_csv(r, 1), cell(3, ' EncodedPixels', ' 7 x 3 4')), siim(),
     S('bad RLE', f"train-rle.csv row 5 (ImageId '{SIIM}2'): EncodedPixels: RLE value 2 (length) is 'x', not an integer",
       check=lambda ds: f'{SIIM}2' not in ids(ds) and siim_mask_ok(ds, f'{SIIM}4'))),
    ('siim1-negative-start', 'siim1', lambda r: edit(siim_csv(r, 1), cell(3, ' EncodedPixels', ' -5 3')), siim(), S('bad RLE', 'RLE run 1: negative start -5')),
    ('siim1-negative-length', 'siim1', lambda r: edit(siim_csv(r, 1), cell(3, ' EncodedPixels', ' 5 -3')), siim(), S('bad RLE', 'RLE run 1: negative length -3')),
    ('siim1-zero-length', 'siim1', lambda r: edit(siim_csv(r, 1), cell(3, ' EncodedPixels', ' 5 0')), siim(), S('bad RLE', 'RLE run 1: length 0')),
    ('siim1-odd-count', 'siim1', lambda r: edit(siim_csv(r, 1), cell(3, ' EncodedPixels', ' 5 3 2')), siim(), S('bad RLE', 'odd number of values (3)')),
    ('siim1-run-past-1024x1024', 'siim1', lambda r: edit(siim_csv(r, 1), cell(3, ' EncodedPixels', ' 1048570 10')), siim(),
     S('bad RLE', 'run ends at pixel 1048580, past the 1048576 pixels')),
    ('siim1-first-row-looks-absolute', 'siim1', lambda r: edit(siim_csv(r, 1), cell(0, ' EncodedPixels', ' 1048000 100 1048200 100')), siim(),
     S('bad RLE', f"row 2 (ImageId '{SIIM}0')", check=lambda ds: ds.convention == 'relative' and siim_mask_ok(ds, f'{SIIM}2'))),
    ('siim1-first-row-not-a-number', 'siim1', lambda r: edit(siim_csv(r, 1), cell(0, ' EncodedPixels', ' abc')), siim(),
     S('bad RLE', "'abc', not an integer", check=lambda ds: ds.convention == 'relative' and siim_mask_ok(ds, f'{SIIM}4'))),
    ('siim1-repeated-row', 'siim1', lambda r: edit(siim_csv(r, 1), repeat(3)), siim(),
     S('duplicate row', f"(ImageId '{SIIM}2')", check=lambda ds: siim_mask_ok(ds, f'{SIIM}2'))),
    ('siim1-no-pneumothorax-beside-rle', 'siim1', lambda r: edit(siim_csv(r, 1), repeat(2, ImageId=f'{SIIM}2')), siim(),
     S('bad value', "EncodedPixels = '-1' (no pneumothorax) but the image also has RLE rows", check=lambda ds: f'{SIIM}2' not in ids(ds))),
    ('siim1-image-id-empty', 'siim1', lambda r: edit(siim_csv(r, 1), cell(3, 'ImageId', '')), siim(), S('missing value', 'row 5', 'ImageId = nan is empty')),
    ('siim1-dicom-missing', 'siim1', lambda r: next(r.rglob(f'{SIIM}2.dcm')).unlink(), siim(), S('missing file', f'{SIIM}2.dcm')),
    ('siim1-no-rle-column', 'siim1', lambda r: edit(siim_csv(r, 1), lambda d: d.rename(columns={' EncodedPixels': 'Pixels'})), siim(),
     E(DataError, 'missing column(s) ImageId / EncodedPixels')),
    ('siim1-values-without-leading-space-are-valid', 'siim1', lambda r: edit(siim_csv(r, 1), lambda d: d.assign(**{' EncodedPixels': d[' EncodedPixels'].str.strip()})),
     siim(), V(lambda ds: ds.convention == 'relative' and all(siim_mask_ok(ds, f'{SIIM}{i}') for i in range(12)))),
    ('siim2-unordered-runs', 'siim2', lambda r: edit(siim_csv(r, 2), cell(3, 'EncodedPixels', '500 3 100 2')), siim(),
     S('bad RLE', "stage_2_train.csv row 5", 'RLE run 2 starts at 100, before run 1')),
    ('siim2-overlapping-runs', 'siim2', lambda r: edit(siim_csv(r, 2), cell(3, 'EncodedPixels', '100 5 102 3')), siim(),
     S('bad RLE', 'RLE run 2 starts at 102, inside run 1 (100…104)')),
    ('siim2-start-zero', 'siim2', lambda r: edit(siim_csv(r, 2), cell(3, 'EncodedPixels', '0 5')), siim(), S('bad RLE', 'start 0 (absolute RLE starts are ≥ 1)')),
    ('siim2-negative-start', 'siim2', lambda r: edit(siim_csv(r, 2), cell(3, 'EncodedPixels', '-5 3')), siim(), S('bad RLE', 'negative start -5')),
    ('siim2-first-row-not-a-number', 'siim2', lambda r: edit(siim_csv(r, 2), cell(0, 'EncodedPixels', 'x 1')), siim(),
     S('bad RLE', "RLE value 1 (start) is 'x'", check=lambda ds: ds.convention == 'absolute' and siim_mask_ok(ds, f'{SIIM}2'))),
    ('siim2-run-past-the-real-image', 'siim2', lambda r: edit(siim_csv(r, 2), cell(3, 'EncodedPixels', '1000 30')), siim(),
     S('unreadable item', f'{SIIM}2.dcm', 'past the last pixel 1024 of a 32×32 image')),
    # COVID Rural (LoVT split files)
    ('covid-id-in-two-split-files', 'covid', lambda r: edit(r / 'train.csv', lambda d: pd.concat([d, pd.DataFrame({'ID': [COVID_IDS[-1]]})])), covid(),
     S('ID in two splits', f"ID '{COVID_IDS[-1]}' is in train.csv and test.csv", check=lambda ds: COVID_IDS[-1] not in ids(ds) and len(ds) == 5)),
    ('covid-repeated-id', 'covid', lambda r: edit(r / 'train.csv', repeat(0)), covid(),
     S('duplicate row', 'train.csv row 7', check=lambda ds: len(ds) == 5)),
    ('covid-id-without-files', 'covid', lambda r: edit(r / 'train.csv', lambda d: pd.concat([d, pd.DataFrame({'ID': ['COVID-19-AR-99_XR']})])), covid(),
     S('missing file', "train.csv row 7: ID 'COVID-19-AR-99_XR' has no mask")),
    ('covid-mask-without-image', 'covid', lambda r: (r / 'jpgs' / f'{COVID_IDS[0]}.jpg').unlink(), covid(),
     S('missing file', f'{COVID_IDS[0]}.jpg (the image of mask', check=lambda ds: len(ds) == 4)),
    ('covid-empty-id', 'covid', lambda r: edit(r / 'test.csv', cell(0, 'ID', '')), covid(), S('missing value', 'test.csv row 2', 'ID = nan is empty')),
    ('covid-image-undecodable', 'covid', lambda r: garbage(r / 'jpgs' / f'{COVID_IDS[0]}.jpg'), covid(), S('unreadable item', f'{COVID_IDS[0]}.jpg')),
    ('covid-no-masks-folder', 'covid', lambda r: shutil.rmtree(r / 'pngs_masks'), covid(), E(DataError, 'no masks in', 'pngs_masks')),
    ('covid-16-bit-mask-is-valid', 'covid', lambda r: Image.fromarray((np.asarray(Image.open(r / "pngs_masks" / f"{COVID_IDS[0]}.png")).astype(np.uint16) * 1000)
                                                                    .astype(np.uint16)).save(r / 'pngs_masks' / f'{COVID_IDS[0]}.png'),
     covid(), V(lambda ds: ds[ids(ds).index(COVID_IDS[0])]['mask'].sum() > 0)),
    # CheXpert 5×200 and ConVIRT 8×200
    ('chexpert-label-out-of-domain', 'chexpert', lambda r: edit(chexpert_csv(r), cell(2, 'Edema', '2')), chexpert(),
     S('bad value', 'train.csv row 4', 'Edema = 2.0 is not one of', check=lambda ds: len(ds) == 10)),
    ('chexpert-repeated-row', 'chexpert', lambda r: edit(chexpert_csv(r), repeat(2)), chexpert(), S('duplicate row', 'train.csv row 29', 'repeats row 4')),
    ('chexpert-no-view-column', 'chexpert', lambda r: edit(chexpert_csv(r), lambda d: d.drop(columns='Frontal/Lateral')), chexpert(),
     E(DataError, "missing column(s) ['Frontal/Lateral']")),
    ('chexpert-too-few-candidates', 'chexpert', lambda r: None, chexpert(n=3), E(DataError, "only 2 candidate images for class 'Atelectasis', need 3")),
    ('chexpert-image-missing', 'chexpert', lambda r: next(r.rglob('patient00000/study1/*.jpg')).unlink(), chexpert(), S('missing file', 'patient00000')),
    ('chexpert-5x200-two-positives', 'chexpert', lambda r: write_5x200(r, cell(0, 'Edema', 1.0)), chexpert(),
     S('bad value', 'chexpert_5x200.csv row 2', 'exactly one positive class', check=lambda ds: len(ds) == 9)),
    ('chexpert-5x200-no-positive', 'chexpert', lambda r: write_5x200(r, cell(0, 'Atelectasis', 0.0)), chexpert(),
     S('bad value', 'chexpert_5x200.csv row 2', 'exactly one positive class')),
    ('chexpert-5x200-repeated-path', 'chexpert', lambda r: write_5x200(r, repeat(0)), chexpert(), S('duplicate row', 'chexpert_5x200.csv row 12')),
    ('chexpert-5x200-is-valid', 'chexpert', lambda r: write_5x200(r), chexpert(),
     V(lambda ds: len(ds) == 10 and sorted(ds.records.category.unique()) == sorted(CHEXPERT_5))),
    ('convirt-candidate-label-text', 'chexpert', lambda r: edit(r / 'image-retrieval' / 'candidate.csv', cell(0, 'Edema', 'x')), chexpert('8x200'),
     S('bad value', 'candidate.csv row 2', "Edema = 'x' is not one of", check=lambda ds: len(ds) == 15)),
    ('convirt-candidate-repeated-path', 'chexpert', lambda r: edit(r / 'image-retrieval' / 'candidate.csv', repeat(0)), chexpert('8x200'),
     S('duplicate row', 'candidate.csv row 18')),
    ('convirt-query-unknown-class', 'chexpert', lambda r: edit(r / 'image-retrieval' / 'query.csv', cell(0, 'Variable', 'Flu')), chexpert('8x200_query'),
     S('bad value', 'query.csv row 2', "Variable = 'Flu' is not one of")),
]


def _checkpoint_cases():
    "Checkpoint folders and files: every load error names the file or folder and what was expected."
    from safetensors.torch import load_file, save_file
    from elvis_nb.models.encoders import resnet_backbone
    from elvis_nb.models.methods import Method, build_method
    load = lambda root, on_error: Method.from_pretrained(root)

    def config(fn):
        def change(root):
            p = root / 'config.json'; p.write_text(fn(p.read_text()))
        return change

    def resnet_folder(root, nan=False, pickled=False):
        from transformers import ResNetConfig, ResNetModel
        from elvis_nb.models.encoders import RESNET_PRESETS
        shutil.rmtree(root); m = ResNetModel(ResNetConfig(**RESNET_PRESETS['tiny']))
        if nan: m.embedder.embedder.convolution.weight.data[0, 0, 0, 0] = float('nan')
        m.save_pretrained(root)
        if pickled: (root / 'model.safetensors').rename(root / 'pytorch_model.bin')

    def other_method(root):
        save_checkpoint(root / 'last.safetensors', build_method('gloria', 'smoke'), config={'method': 'gloria', 'profile': 'smoke'})

    def nan_weight(root):
        w = load_file(root / 'model.safetensors'); k = next(k for k, v in w.items() if v.is_floating_point())
        w[k].view(-1)[0] = float('inf'); save_file(w, str(root / 'model.safetensors'))

    return [
        ('ckpt-corrupt-safetensors', 'method', lambda r: (r / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a'), load,
         E(CheckpointError, 'model.safetensors: not a readable safetensors file')),
        ('ckpt-truncated-safetensors', 'method', lambda r: (r / 'model.safetensors').write_bytes((r / 'model.safetensors').read_bytes()[:1000]), load,
         E(CheckpointError, 'model.safetensors: not a readable safetensors file')),
        ('ckpt-non-finite-weight', 'method', nan_weight, load, E(CheckpointError, 'model.safetensors: tensor', 'non-finite value(s)')),
        ('ckpt-config-invalid-json', 'method', config(lambda s: s[:-10]), load, E(CheckpointError, 'config.json: not valid JSON')),
        ('ckpt-config-without-method', 'method', config(lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != 'method'})), load,
         E(CheckpointError, "config.json: missing field(s) ['method']")),
        ('ckpt-config-unknown-method', 'method', config(lambda s: json.dumps({**json.loads(s), 'method': 'clip'})), load,
         E(CheckpointError, "config.json: method 'clip' is not one of")),
        ('ckpt-config-other-format', 'method', config(lambda s: json.dumps({**json.loads(s), 'format': 'hf'})), load,
         E(CheckpointError, "config.json: format 'hf', expected 'elvis_nb-method-1'")),
        ('ckpt-config-unknown-option', 'method', config(lambda s: json.dumps({**json.loads(s), 'options': {**json.loads(s)['options'], 'warp': 9}})), load,
         E(CheckpointError, "config.json does not describe a buildable 'convirt' model")),
        ('ckpt-missing-tokenizer', 'method', lambda r: shutil.rmtree(r / 'tokenizer'), load, E(FileNotFoundError, 'no tokenizer/tokenizer.json')),
        ('ckpt-missing-config', 'method', lambda r: (r / 'config.json').unlink(), load, E(FileNotFoundError, 'no config.json, not a method checkpoint folder')),
        ('ckpt-training-file-as-folder', 'method', other_method, lambda r, e: Method.from_pretrained(r / 'last.safetensors'),
         E(CheckpointError, 'last.safetensors is a file; expected a method checkpoint folder')),
        ('ckpt-training-checkpoint-of-another-method', 'method', other_method,
         lambda r, e: load_checkpoint(r / 'last.safetensors', build_method('convirt', 'smoke')),
         E(CheckpointError, "last.safetensors holds the weights of another model (its config: method 'gloria'")),
        ('encoder-only-pickled-weights', 'method', lambda r: resnet_folder(r, pickled=True), lambda r, e: resnet_backbone(str(r)),
         E(CheckpointError, "only ['pytorch_model.bin']: elvis_nb loads weights only from safetensors")),
        ('encoder-non-finite-weights', 'method', lambda r: resnet_folder(r, nan=True), lambda r, e: resnet_backbone(str(r)),
         E(CheckpointError, 'image encoder', 'holds 1 non-finite value(s)')),
        ('encoder-empty-folder', 'method', lambda r: (shutil.rmtree(r), r.mkdir()), lambda r, e: resnet_backbone(str(r)),
         E(CheckpointError, 'no *.safetensors weights; expected model.safetensors and config.json')),
    ]


CASES += _checkpoint_cases()


def _read_all(ds):
    "Every item, as a training epoch would read it."
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize('name,fixture,change,load,outcome', CASES, ids=[c[0] for c in CASES])
def test_bad_input_table(name, fixture, change, load, outcome, base, tmp_path):
    root = shutil.copytree(base[fixture], tmp_path / fixture)
    change(root)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if isinstance(outcome, Error):
            for on_error in ('raise', 'skip') if outcome.cls is DataError else ('raise',):
                with pytest.raises(outcome.cls) as e: _read_all(load(root, on_error))
                for w in outcome.words: assert w in str(e.value), (w, str(e.value))
            return
        if isinstance(outcome, Valid):
            ds = load(root, 'raise'); _read_all(ds)
            assert ds.skipped == {} and outcome.check(ds)
            return
        with pytest.raises(DataError) as e: _read_all(load(root, 'raise'))
        for w in outcome.words: assert w in str(e.value), (w, str(e.value))
        ds = load(root, 'skip'); _read_all(ds)
        assert dict(ds.skipped) == {outcome.kind: outcome.n}, ds.skipped
        assert outcome.check is None or outcome.check(ds)


def test_table_size_and_outcomes():
    kinds = [type(c[-1]).__name__ for c in CASES]
    assert len(CASES) >= 60 and {'Error', 'Skip', 'Valid'} <= set(kinds)
    print({k: kinds.count(k) for k in ('Error', 'Skip', 'Valid')}, len(CASES))


def test_skip_counts_reach_the_caller_from_dataloader_workers(base, tmp_path):
    root = shutil.copytree(base['rsna'], tmp_path / 'rsna')
    garbage(root / 'stage_2_train_images' / 'pt4.dcm'); garbage(root / 'stage_2_train_images' / 'pt6.dcm')
    ds = R.RSNAPneumonia('all', 'smoke', data_root=root, on_error='skip')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        seen = [i for b in DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate) for i in b['id']]
    assert ds.skipped == {'unreadable item': 2} and not {'pt4', 'pt6'} & set(seen) and len(seen) == len(ds)


# ---------------------------------------------------------------- property-based tests
def reference_rle2mask(rle: str, width: int, height: int, convention: str) -> np.ndarray:
    """The SIIM-ACR competition decoder (`mask_functions.rle2mask`), re-written from its documented behaviour: pairs
    (start, length); 'relative': `position += start; mask[position:position+length] = 255; position += length` over a
    flat width×height array (stage 1); 'absolute': the start is the 1-based flat index itself (stage 2); then
    `reshape(width, height).T` (column-major)."""
    mask = np.zeros(width * height, np.uint8)
    values = [int(v) for v in rle.split()]
    position = 0
    for start, length in zip(values[0::2], values[1::2]):
        if convention == 'relative':
            position += start
            mask[position:position + length] = 255
            position += length
        else:
            mask[start - 1:start - 1 + length] = 255
    return mask.reshape(width, height).T > 0


masks = st.integers(1, 12).flatmap(lambda h: st.integers(1, 12).flatmap(
    lambda w: st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(lambda v: np.array(v).reshape(h, w))))


@settings(max_examples=100, deadline=None)
@given(masks, st.sampled_from(['relative', 'absolute']))
def test_rle_round_trip_and_reference_decoder(mask, convention):
    rle = R.rle_encode(mask, convention)
    assert np.array_equal(R.rle_decode(rle, mask.shape, convention), mask)
    if rle != '-1':
        H, W = mask.shape
        assert np.array_equal(reference_rle2mask(rle, W, H, convention), mask)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-3, 40), min_size=1, max_size=8), st.sampled_from(['relative', 'absolute']))
def test_rle_invalid_values_never_silently_accepted(values, convention):
    "Any integer pairs: either a DataError, or exactly what the reference decoder paints (and then every run is valid)."
    rle, shape = ' '.join(map(str, values)), (6, 7)
    try: mask = R.rle_decode(rle, shape, convention)
    except DataError: return
    if values == [-1]: assert not mask.any(); return                                        # SIIM's 'no pneumothorax'
    s, l = np.array(values[0::2]), np.array(values[1::2])
    assert len(values) % 2 == 0 and (l >= 1).all() and (s >= (1 if convention == 'absolute' else 0)).all()
    if convention == 'absolute': assert (s[1:] >= s[:-1] + l[:-1]).all()                 # ordered, disjoint
    assert np.array_equal(mask, reference_rle2mask(rle, shape[1], shape[0], convention))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet='0123456789 -x.', max_size=12), st.sampled_from(['relative', 'absolute']))
def test_rle_arbitrary_text_is_a_data_error_or_a_mask(text, convention):
    try: m = R.rle_decode(text, (5, 5), convention)
    except DataError: return
    assert m.shape == (5, 5) and m.dtype == bool


coords = st.one_of(st.floats(-50, 150, allow_nan=False), st.just(float('nan')), st.just(float('inf')))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(coords, coords, coords, coords), min_size=1, max_size=4))
def test_box_parsing_rejects_what_it_cannot_paint(boxes):
    "RSNA rows (x, y, w, h): every non-finite or out-of-image box is a counted skip; what is kept paints exactly its boxes."
    df = pd.DataFrame([dict(patientId='p', x=x, y=y, width=w, height=h, Target=1) for x, y, w, h in boxes])
    p = R.Problems('prop', 'skip')
    good = R.check_rows(df, 'labels.csv', p, 'patientId', number=['x', 'y', 'width', 'height'])
    finite = np.isfinite(df[['x', 'y', 'width', 'height']].to_numpy()).all(1)
    assert list(good.index) == list(np.flatnonzero(finite)) and sum(p.counts.values()) == int((~finite).sum())
    assert np.isfinite(good[['x', 'y', 'width', 'height']].to_numpy()).all()
    ok = good[(good.x >= 0) & (good.y >= 0) & (good.width > 0) & (good.height > 0) & (good.x + good.width <= 100) & (good.y + good.height <= 100)]
    m = boxes_to_mask(np.stack([ok.x, ok.y, ok.x + ok.width, ok.y + ok.height], 1) if len(ok) else np.zeros((0, 4)), (100, 100))
    ref, centre = np.zeros((100, 100), bool), np.arange(100) + 0.5                 # box by box: pixels whose centre is inside
    for x, y, w, h in ok[['x', 'y', 'width', 'height']].itertuples(index=False):
        ref[np.ix_((centre >= y) & (centre < y + h), (centre >= x) & (centre < x + w))] = True
    assert np.array_equal(m.numpy(), ref)


words = st.sampled_from(['Small', 'left', 'effusion', 'Dr.', 'e.g.', 'vs.', 'approx.', 'nodule', 'NG', 'tube', '(stable)',
                         'unchanged', 'no', 'pneumothorax'])
numbers = st.one_of(st.decimals(0, 99, places=1, allow_nan=False, allow_infinity=False).map(lambda d: f'{d} cm'),
                    st.tuples(st.integers(0, 9), st.integers(0, 9)).map(lambda t: f'0.{t[0]} x 1.{t[1]} cm'))
sentences = st.lists(st.one_of(words, numbers), min_size=1, max_size=8).map(' '.join).flatmap(
    lambda s: st.sampled_from(['.', '!', '?']).map(lambda p: s[0].upper() + s[1:] + p))


@settings(max_examples=100, deadline=None)
@given(st.lists(sentences, min_size=1, max_size=5), st.sampled_from([' ', '\n', '  ', '\n \n']))
def test_sentences_keep_numbers_and_lose_no_character(parts, sep):
    text = sep.join(parts)
    out = split_sentences(text)
    assert ''.join(''.join(out).split()) == ''.join(text.split())               # joining loses no non-space character
    for n in (t for p in parts for t in re.findall(r'\d+\.\d+', p)):
        assert any(n in s for s in out)                                          # every decimal survives whole
    assert len(out) == len(parts) and all(s[-1] in '.!?' for s in out)
