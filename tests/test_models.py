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


def _rank_grads(rank, world, port, name, images, texts, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.set_num_threads(1)
    seed_everything(0)
    m = build_method(name, 'smoke').eval()          # eval: BatchNorm uses stored statistics, same on every rank
    B = len(texts) // world
    sl = slice(rank * B, (rank + 1) * B)
    loss = m(images[sl], m.tokenize(texts[sl])).loss
    loss.backward()
    for p in m.parameters():                        # what DDP does: average the gradients over ranks
        if p.grad is not None: dist.all_reduce(p.grad); p.grad /= world
    if rank == 0: out.put((loss.item(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}))
    dist.barrier(); dist.destroy_process_group()


@pytest.mark.parametrize('name', ['convirt', 'gloria', 'elvis'])
def test_two_processes_give_the_single_process_gradient(name):
    "With gather_with_grad, 2 ranks × B/2 (DDP-averaged) = 1 process × B: same loss, same gradients."
    images, texts = torch.rand(4, 1, 64, 64), TEXTS
    seed_everything(0)
    m = build_method(name, 'smoke').eval()
    loss = m(images, m.tokenize(texts)).loss
    loss.backward()
    q = mp.get_context('spawn').SimpleQueue()
    procs = mp.start_processes(_rank_grads, args=(2, _free_port(), name, images, texts, q), nprocs=2,
                               join=False, start_method='spawn')
    loss2, grads2 = q.get()          # read before joining: a child cannot exit while its message is unread
    procs.join()
    assert abs(loss2 - loss.item()) < 1e-5
    for k, p in m.named_parameters():
        if p.grad is not None: torch.testing.assert_close(grads2[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)
