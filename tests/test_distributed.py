"""Two CPU processes (gloo) compute the same loss and gradients as one process on the whole batch."""
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from elvis_nb.distributed import (all_reduce_mean, convert_batchnorm, gather_with_grad, get_rank, get_world_size,
                                  is_distributed, is_main_process)


def _entry(rank, world, init_file, out_dir, worker, args):
    os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try: torch.save(worker(rank, world, *args), Path(out_dir) / f'rank{rank}.pt')
    finally: dist.destroy_process_group()


def spawn(worker, world: int, *args) -> list:
    "Run `worker(rank, world, *args)` in `world` gloo processes; return each rank's returned object."
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(world, str(Path(tmp) / 'init'), tmp, worker, args), nprocs=world, join=True)
        return [torch.load(Path(tmp) / f'rank{r}.pt', weights_only=False) for r in range(world)]


def _toy_model():
    torch.manual_seed(0)
    return nn.ModuleDict({'img': nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)),
                          'txt': nn.Linear(6, 4)})


def _toy_batch(n):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g), torch.randn(n, 6, generator=g)


def _toy_loss(model, x, t):
    "InfoNCE over gathered embeddings (couples samples) plus a per-sample term kept local."
    v = F.normalize(gather_with_grad(model['img'](x)), dim=-1)  # [W·B, D]
    u = F.normalize(gather_with_grad(model['txt'](t)), dim=-1)
    logits = v @ u.T / 0.1
    labels = torch.arange(len(v))
    per_sample = model['txt'](t).pow(2).mean()                   # mean over the local B: exact after DDP's average
    return F.cross_entropy(logits, labels) + per_sample


def _toy_worker(rank, world, n):
    assert is_distributed() and get_rank() == rank and get_world_size() == world and is_main_process() == (rank == 0)
    model = convert_batchnorm(_toy_model())
    x, t = _toy_batch(n)
    b = n // world
    loss = _toy_loss(model, x[rank*b:(rank+1)*b], t[rank*b:(rank+1)*b])
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    for g in grads.values(): dist.all_reduce(g); g /= world          # what DDP does
    logged = all_reduce_mean({'loss': loss.item()})
    return {'grads': grads, 'loss': logged['loss'], 'running_mean': model['img'][1].running_mean.clone()}


def test_two_processes_equal_one_process():
    n = 8
    model = _toy_model()
    x, t = _toy_batch(n)
    loss = _toy_loss(model, x, t)
    loss.backward()
    res = spawn(_toy_worker, 2, n)
    for r in res:
        assert abs(r['loss'] - loss.item()) < 1e-5
        torch.testing.assert_close(r['running_mean'], model['img'][1].running_mean, rtol=1e-5, atol=1e-6)
        for k, p in model.named_parameters():
            torch.testing.assert_close(r['grads'][k], p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f'{k}: {m}')


def test_identity_outside_a_process_group():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x and get_world_size() == 1 and is_main_process()
