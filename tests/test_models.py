"""Tests of the models layer (encoders, heads, methods) that are too slow or too file-bound for the notebooks."""
import tempfile

from transformers import AutoTokenizer

from elvis_nb.core import repo_root
from elvis_nb.models.encoders import build_synthcxr_tokenizer


def test_synthcxr_tokenizer_regenerates_identically():
    "The committed tokenizer folder is what its recipe produces (the vocabulary builder has no ties, no hashing)."
    committed = AutoTokenizer.from_pretrained(repo_root() / 'data_samples' / 'tokenizer-synthcxr')
    with tempfile.TemporaryDirectory() as d:
        fresh = AutoTokenizer.from_pretrained(build_synthcxr_tokenizer(d))
    assert fresh.get_vocab() == committed.get_vocab()
    text = 'No pneumothorax. Mild cardiomegaly with a smal left effusion.'
    assert fresh(text)['input_ids'] == committed(text)['input_ids']


# ---------------------------------------------------------------- methods
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from elvis_nb.core import get_profile, seed_everything
from elvis_nb.models.methods import METHODS, Method, build_method, load_method

TEXTS = ['No pleural effusion or pneumothorax.', 'Mild cardiomegaly. Small left pleural effusion.',
         'There is subsegmental atelectasis in the left base.', 'The lungs are clear.']


@pytest.mark.parametrize('name', sorted(METHODS))
def test_round_trip_identical_outputs(name, tmp_path):
    "save_pretrained → from_pretrained gives the same method, config and outputs (eval mode), for every method."
    seed_everything(0)
    m = build_method(name, 'smoke').eval()
    images, tokens = torch.rand(4, 1, 64, 64), m.tokenize(TEXTS)
    m.save_pretrained(tmp_path, card={'metrics': {'val_loss': 0.5}})
    m2 = Method.from_pretrained(tmp_path)
    assert (m2.name, m2.config, type(m2)) == (m.name, m.config, type(m))
    with torch.no_grad():
        a, b = m(images, tokens), m2(images, m2.tokenize(TEXTS))
        assert torch.equal(a.loss, b.loss)
        assert torch.equal(m.encode_image(images).local_emb, m2.encode_image(images).local_emb)
        assert torch.equal(m.encode_text(tokens).local_emb, m2.encode_text(tokens).local_emb)
    assert not any(p.suffix in ('.bin', '.pt', '.pth', '.pkl') for p in tmp_path.rglob('*'))   # no pickle anywhere


def test_wrong_checkpoint_errors(tmp_path):
    build_method('gloria', 'smoke').save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'gloria' model of profile 'smoke', not 'elvis'"):
        load_method(tmp_path, 'elvis', 'smoke')
    with pytest.raises(ValueError, match='embed_dim 32 ≠ 64'):
        load_method(tmp_path, 'gloria', 'quick')
    with pytest.raises(FileNotFoundError, match='not a method checkpoint folder'):
        load_method(tmp_path / 'nothing', 'gloria')


def test_paper_profile_without_clinicalbert_fails_clearly(monkeypatch, tmp_path):
    "Offline, the paper profile's text encoder must fail at once and name the folder to download to."
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setenv('ELVIS_NB_CACHE', str(tmp_path))
    with pytest.raises(FileNotFoundError, match='Bio_ClinicalBERT --local-dir'):
        build_method('elvis', 'paper')


@pytest.mark.parametrize('name', sorted(METHODS))
def test_train_steps_reduce_loss(name):
    "A few optimiser steps on one smoke batch lower the loss (every component is wired to trainable weights)."
    seed_everything(0)
    m = build_method(name, 'smoke')
    images, tokens = torch.rand(4, 1, 64, 64), m.tokenize(TEXTS)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        out = m(images, tokens)
        opt.zero_grad(); out.loss.backward(); opt.step()
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _rank_grads(rank, world, port, names, images, texts, folder):
    import torch.distributed as dist
    from safetensors.torch import save_file
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.set_num_threads(1)
    B = len(texts) // world
    sl = slice(rank * B, (rank + 1) * B)
    for name in names:
        seed_everything(0)
        m = build_method(name, 'smoke').eval()      # eval: BatchNorm uses stored statistics, same on every rank
        loss = m(images[sl], m.tokenize(texts[sl])).loss
        loss.backward()
        for p in m.parameters():                    # what DDP does: average the gradients over ranks
            if p.grad is not None: dist.all_reduce(p.grad); p.grad /= world
        mean_loss = loss.detach().clone(); dist.all_reduce(mean_loss); mean_loss /= world
        if rank == 0: save_file({'__loss__': mean_loss, **{k: p.grad for k, p in m.named_parameters() if p.grad is not None}},
                                f'{folder}/{name}.safetensors')
    dist.barrier(); dist.destroy_process_group()


def test_two_processes_give_the_single_process_gradient(tmp_path):
    """With gather_with_grad, 2 ranks × B/2 (DDP-averaged) = 1 process × B: the same loss (averaged over ranks: ELVIS's
    local terms are per-rank means) and the same gradients, for every method."""
    from safetensors.torch import load_file
    images, texts, names = torch.rand(4, 1, 64, 64), TEXTS, ['convirt', 'gloria', 'elvis']
    mp.start_processes(_rank_grads, args=(2, _free_port(), names, images, texts, str(tmp_path)), nprocs=2, start_method='spawn')
    for name in names:
        seed_everything(0)
        m = build_method(name, 'smoke').eval()
        loss = m(images, m.tokenize(texts)).loss
        loss.backward()
        grads2 = load_file(tmp_path / f'{name}.safetensors')
        assert abs(grads2['__loss__'].item() - loss.item()) < 1e-5, name
        for k, p in m.named_parameters():
            if p.grad is not None: torch.testing.assert_close(grads2[k], p.grad, rtol=1e-4, atol=1e-6, msg=f'{name}: {k}')


# The options of an ELVIS checkpoint's config.json as written before ElvisConfig inherited ElvisLocalConfig (a46b089)
OLD_ELVIS_OPTIONS = {'embed_dim': 32, 'hidden_dim': 2048, 'local_stage': 3, 'input_size': None, 'image_weights': None,
                     'text_level': 'words', 'text_last_n_layers': 1, 'text_pooling': 'attention', 'freeze_text_layers': 0,
                     'cls_as_word': False, 'tau_g': 0.3, 'lambda_i2t': 0.75, 'tau_src': 0.3, 'tau_tgt': 0.2,
                     'target': 'intra_modal', 'both_directions': True, 'weight_image': 0.6, 'weight_text': 0.75,
                     'attention': 'lovt', 'attention_norm': 'batch'}


def test_old_elvis_config_json_still_loads(tmp_path):
    "A checkpoint whose config.json holds the pre-composition ElvisConfig options loads, with the same local-loss config."
    import json
    from dataclasses import asdict, fields
    from elvis_nb.losses.elvis import ElvisLocalConfig
    from elvis_nb.models.methods import ElvisConfig
    new = set(asdict(ElvisConfig())) - set(OLD_ELVIS_OPTIONS)                 # options added since (#13), e.g. target_source
    assert set(OLD_ELVIS_OPTIONS) <= set(asdict(ElvisConfig()))             # the same flat keys: no migration
    seed_everything(0)
    m = build_method('elvis', 'smoke', tau_tgt=0.2, weight_image=0.6)
    m.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / 'config.json').read_text())
    meta['options'] = OLD_ELVIS_OPTIONS                                       # written in the old key order
    (tmp_path / 'config.json').write_text(json.dumps(meta))
    m2 = Method.from_pretrained(tmp_path)
    assert m2.config == m.config and isinstance(m2.config, ElvisLocalConfig)
    assert {f.name: getattr(m2.config, f.name) for f in fields(ElvisLocalConfig)} == asdict(
        ElvisLocalConfig(tau_tgt=0.2, weight_image=0.6))
    assert {k: getattr(m2.config, k) for k in new} == {k: getattr(ElvisConfig(), k) for k in new}   # their defaults: the old loss
    with pytest.raises(ValueError, match='tau_tgt must be positive'):
        ElvisConfig(**{**OLD_ELVIS_OPTIONS, 'tau_tgt': 0})                    # the loss's own checks still run
