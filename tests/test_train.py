"""The training loop: distributed equals single-process, exact resume after a real kill, clear failures, the experiment."""
import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel

from elvis_nb.core import get_profile
from elvis_nb.distributed import all_reduce_mean, convert_batchnorm
from elvis_nb.train import NonFiniteLossError, TrainConfig, train
from elvis_nb.checkpoint import checkpoint_info
from test_distributed import spawn

from elvis_nb.core import METHOD_NAMES as METHODS
ROOT = Path(__file__).resolve().parents[1]


def _quiet(method: nn.Module) -> nn.Module:
    "Dropout off everywhere (nn.Dropout and the attention dropout of HF models), so two runs draw nothing random."
    for m in method.modules():
        if isinstance(m, nn.Dropout): m.p = 0.0
        for attr in ('dropout_prob', 'attention_dropout', 'dropout_p'):
            if isinstance(getattr(m, attr, None), float): setattr(m, attr, 0.0)
    return method


def _build(name: str) -> nn.Module:
    from elvis_nb.models.methods import build_method
    torch.manual_seed(0)
    return _quiet(build_method(name, get_profile('smoke'))).train()


def _batch(n: int):
    from elvis_nb.data.synth import SynthPretrain
    items = [SynthPretrain('train', 'smoke', 0)[i] for i in range(n)]
    return torch.stack([it['image'] for it in items]), [it['text'] for it in items]


def _loss_and_grads(model, method, images, texts):
    out = model(images, method.tokenize(texts))
    out.loss.backward()
    values = {'loss': out.loss.item(), **{k: v.item() for k, v in out.components.items()}}
    return values, {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}


def _ddp_worker(rank, world, n):
    "Every method on this rank's half of the batch, DDP-wrapped with synchronised batch norm."
    torch.set_num_threads(1)
    images, texts = _batch(n)
    b, results = n // world, {}
    for name in METHODS:
        method = convert_batchnorm(_build(name))
        values, grads = _loss_and_grads(DistributedDataParallel(method), method, images[rank * b:(rank + 1) * b],
                                        texts[rank * b:(rank + 1) * b])
        results[name] = {'values': all_reduce_mean(values), 'grads': grads}
    return results


@pytest.fixture(scope='module')
def two_process_results():
    return spawn(_ddp_worker, 2, 8)


@pytest.mark.parametrize('name', METHODS)
def test_two_processes_equal_one_process(name, two_process_results):
    method = _build(name)
    images, texts = _batch(8)
    ref_values, ref_grads = _loss_and_grads(method, method, images, texts)
    for res in (r[name] for r in two_process_results):
        for k, v in ref_values.items(): assert math.isclose(res['values'][k], v, rel_tol=1e-4, abs_tol=1e-5), (k, res['values'][k], v)
        assert set(res['grads']) == set(ref_grads)
        for k, g in ref_grads.items():  # float32 sums in another order: tolerance relative to the tensor's scale
            torch.testing.assert_close(res['grads'][k], g, rtol=1e-3, atol=max(1e-4 * g.abs().max().item(), 2e-6),
                                       msg=lambda m: f'{name} {k}: {m}')


def _cli(out: Path, steps: int = 6) -> list[str]:
    return [sys.executable, '-m', 'elvis_nb.train', '--method', 'elvis', '--profile', 'smoke', '--out', str(out),
            '--max-steps', str(steps), '-o', 'epochs', '3', '-o', 'checkpoint_every', '1', '-o', 'progress', 'False']


def _weights(path: Path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith('/model/')}


def test_killed_run_resumes_bit_for_bit(tmp_path):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    subprocess.run(_cli(tmp_path / 'whole'), check=True, env=env, capture_output=True, timeout=300)
    last = tmp_path / 'killed' / 'checkpoints' / 'last.safetensors'
    proc = subprocess.Popen(_cli(tmp_path / 'killed'), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if checkpoint_info(last)['step'] >= 2: break
        except (FileNotFoundError, ValueError, OSError): pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    killed_at = checkpoint_info(last)['step']
    assert 2 <= killed_at < 6
    subprocess.run(_cli(tmp_path / 'killed'), check=True, env=env, capture_output=True, timeout=300)
    whole, resumed = _weights(tmp_path / 'whole' / 'checkpoints' / 'last.safetensors'), _weights(last)
    assert checkpoint_info(last)['step'] == 6 and set(whole) == set(resumed)
    for k in whole: assert torch.equal(whole[k], resumed[k]), k
    with open(tmp_path / 'killed' / 'metrics.csv', newline='') as f:
        steps = [int(r['step']) for r in csv.DictReader(f) if r['split'] == 'train']
    assert steps == sorted(set(steps)) == list(range(1, 7))  # the log shows each step once


def test_finished_run_continues_with_a_larger_budget(tmp_path):
    "A run that stopped at its step budget resumes and trains on when asked for more steps; an early stop would stay."
    cfg = TrainConfig(method='convirt', profile='smoke', out_dir=str(tmp_path), max_steps=2, progress=False, synth_cache=False)
    assert train(cfg).steps == 2
    longer = train(dataclasses.replace(cfg, max_steps=4))
    assert (longer.steps, longer.stopped) == (4, 'max_steps')
    assert checkpoint_info(tmp_path / 'checkpoints' / 'last.safetensors')['step'] == 4


def test_nan_stops_with_step_and_component_and_keeps_checkpoint(tmp_path):
    from elvis_nb.models.methods import build_method
    method = build_method('elvis', get_profile('smoke'))
    forward, calls = method.forward, {'n': 0}

    def poisoned(images, tokens):
        out = forward(images, tokens)
        if not method.training: return out
        calls['n'] += 1
        if calls['n'] < 3: return out
        name = calls['name'] = next(iter(out.components))
        comps = {**out.components, name: out.components[name] * float('nan')}
        return dataclasses.replace(out, loss=out.loss * float('nan'), components=comps)

    method.forward = poisoned
    cfg = TrainConfig(method='elvis', profile='smoke', out_dir=str(tmp_path), max_steps=6, epochs=3, checkpoint_every=1, progress=False)
    with pytest.raises(NonFiniteLossError, match='non-finite loss at step 3') as e:
        train(cfg, method=method)
    last = tmp_path / 'checkpoints' / 'last.safetensors'
    assert f"component '{calls['name']}'" in str(e.value) and f"{last} holds step 2, not validated" in str(e.value)
    assert checkpoint_info(last)['step'] == 2
    assert all(torch.isfinite(v).all() for v in _weights(last).values())


def test_nan_validation_is_never_best_nor_exported(tmp_path):
    "A finite training loss but a NaN validation loss: the run stops, `best` stays the last finite validation, no model/."
    from elvis_nb.models.methods import build_method
    method = build_method('convirt', get_profile('smoke'))
    forward, calls = method.forward, {'train': 0}

    def poisoned(images, tokens):
        out = forward(images, tokens)
        if method.training: calls['train'] += 1; return out
        if calls['train'] < 2: return out
        return dataclasses.replace(out, loss=out.loss * float('nan'))

    method.forward = poisoned
    cfg = TrainConfig(method='convirt', profile='smoke', out_dir=str(tmp_path), max_steps=4, epochs=3, val_every=1, progress=False)
    with pytest.raises(NonFiniteLossError, match='non-finite validation loss at step 2: nan') as e:
        train(cfg, method=method)
    best = tmp_path / 'checkpoints' / 'best.safetensors'
    assert checkpoint_info(best)['step'] == 1 and f"the best checkpoint, validation loss" in str(e.value) and str(best) in str(e.value)
    assert checkpoint_info(tmp_path / 'checkpoints' / 'last.safetensors')['step'] == 1    # the NaN state is never written
    assert not (tmp_path / 'model').exists() and not (tmp_path / 'train_summary.json').exists()


def test_bad_paths_reported_before_training(tmp_path):
    (tmp_path / 'file').write_text('')
    t0 = time.time()
    with pytest.raises(PermissionError, match='cannot write to the output folder'):
        train(TrainConfig(out_dir=str(tmp_path / 'file' / 'run')))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        train(TrainConfig(out_dir=str(tmp_path / 'run'), data_root=str(tmp_path / 'nowhere')))
    assert time.time() - t0 < 5 and not (tmp_path / 'run' / 'metrics.csv').exists()


def test_pretrain_experiment_smoke(tmp_path):
    from elvis_nb.runner import run_experiment
    res = run_experiment('pretrain', tmp_path, profile='smoke', method='elvis', seed=0, device='cpu')
    for k in ('method', 'profile', 'steps', 'initial_val', 'final_val', 'best_val', 'pair_similarity', 'pairs_per_s',
              'data_share', 'peak_memory_mb', 'paths'):
        assert k in res, k
    assert res['steps'] == get_profile('smoke').max_steps and 'loss' in res['final_val']
    assert {'matched', 'unmatched'} <= set(res['pair_similarity'])
    for k in ('model', 'last', 'best', 'metrics'): assert Path(res['paths'][k]).exists(), k
    assert (tmp_path / 'loss_curves.png').exists() and (tmp_path / 'attention.png').exists()


@pytest.mark.slow
@pytest.mark.parametrize('name', METHODS)
def test_quick_training_learns(name, tmp_path):
    "Under `quick` on SynthCXR: validation loss falls and matched pairs score above unmatched ones."
    from elvis_nb.runner import run_experiment
    res = run_experiment('pretrain', tmp_path, profile='quick', method=name, seed=0, device='auto')
    print(name, json.dumps({k: res[k] for k in ('initial_val', 'best_val', 'pair_similarity', 'steps', 'pairs_per_s', 'wall_seconds')}))
    assert res['best_val']['loss'] < res['initial_val']['loss']
    assert res['pair_similarity']['matched'] > res['pair_similarity']['unmatched']


def test_quick_profile_sets_one_rate_and_full_reports():
    "`quick` overrides the papers' presets (random-init encoders, few steps); `paper` keeps them."
    from elvis_nb.train import TrainConfig, resolve_config
    for m in ('convirt', 'gloria', 'elvis'):
        c = resolve_config(TrainConfig(method=m, profile='quick'))
        assert (c.lr, c.augment.text, c.augment.rotate_deg, c.augment.blur_sigma) == (3e-4, 'full', 0, None), m
    assert resolve_config(TrainConfig(method='gloria', profile='paper')).lr == 5e-5
    assert resolve_config(TrainConfig(method='convirt', profile='paper')).augment.text == 'random_sentence'
