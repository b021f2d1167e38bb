"""Training throughput (pairs/s), peak memory, model FLOP utilisation and the data-loading share of step time,
per method and profile.

    python bench/train.py                      # smoke and quick on CPU; paper too when a GPU is visible
    python bench/train.py --profiles smoke     # a subset
Writes bench/results/train.json. Each (method, profile) runs in its own process so that peak memory is its own.
Numbers come from `elvis_nb.train.train` itself (its metrics rows), excluding the first step (warm-up).
The `paper` row runs on CUDA only, with the ClinicalBERT stand-in when ClinicalBERT is not on disk (its
`text_encoder` says so). Model FLOP utilisation = FLOPs of one step (forward + backward, counted by
`torch.utils.flop_counter`) × steps per second / the card's dense bf16 peak (PEAK_TFLOPS; None for an unknown card).
"""
from __future__ import annotations
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

from elvis_nb.core import METHOD_NAMES as METHODS
STEPS = {'smoke': 6, 'quick': 4, 'paper': 20}
PEAK_TFLOPS = {'H200': 989, 'H100': 989, 'A100': 312, 'L40S': 362, 'L4': 121, 'A10': 125, 'V100': 125}  # dense bf16/fp16


def peak_tflops(device_name: str) -> float | None:
    "The dense bf16 peak of a CUDA card from its name (None when the card is not in PEAK_TFLOPS)."
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def step_flops(method, batch_size: int, device: str = 'cpu', precision: str = 'fp32') -> int:
    "FLOPs of one training step of `method` (forward + backward on SynthCXR pairs), counted by torch's FlopCounterMode."
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from elvis_nb.data.synth import SynthPretrain
    from elvis_nb.data.transforms import collate
    ds = SynthPretrain('train', method.profile, 0, n=batch_size, cache=False)
    batch = collate([ds[i] for i in range(batch_size)])
    images, tokens = batch['image'].to(device), {k: v.to(device) for k, v in method.tokenize(batch['text']).items()}
    method.train()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(precision)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            out = method(images, tokens)
        out.loss.backward()
    method.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def paper_overrides() -> dict:
    "Profile overrides of the paper row: the ClinicalBERT stand-in when ClinicalBERT is not on disk."
    from elvis_nb.core import get_profile
    from elvis_nb.models.encoders import text_encoder_or_standin
    return {'text_encoder': text_encoder_or_standin(get_profile('paper').text_encoder)}


def measure(method: str, profile: str, steps: int) -> dict:
    "Train `steps` optimiser steps of `method` under `profile` and return throughput and memory."
    import torch
    from elvis_nb.train import TrainConfig, train
    device = 'cuda' if profile == 'paper' else 'cpu'
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        r = train(TrainConfig(method=method, profile=profile, out_dir=d, device=device, max_steps=steps, epochs=10**6,
                              val_at_start=False, checkpoint_every=10**9, progress=False, n_val=8, synth_cache=False,
                              profile_overrides=paper_overrides() if profile == 'paper' else {}))
        rows = [row for row in r.history if row['split'] == 'train'][1:]   # drop the warm-up step
        summary = json.loads((Path(d) / 'train_summary.json').read_text())
    b = r.config['batch_size'] * r.config['grad_accum']
    sec = [b / row['pairs_per_s'] for row in rows]                           # seconds per step
    name = torch.cuda.get_device_name() if device == 'cuda' else 'cpu'
    flops = step_flops(r.method, b, device, r.config['precision'])          # one step, forward + backward
    peak = peak_tflops(name) if device == 'cuda' else None
    return {'method': method, 'profile': profile, 'device': name, 'text_encoder': r.method.profile.text_encoder,
            'precision': r.config['precision'], 'batch_size': b, 'steps_timed': len(rows),
            'pairs_per_s': round(b * len(rows) / sum(sec), 2),
            'step_tflop': round(flops / 1e12, 4),
            'mfu': round(flops * len(rows) / sum(sec) / (peak * 1e12), 4) if peak else None,
            'data_share': round(sum(row['data_share'] * s for row, s in zip(rows, sec)) / sum(sec), 3),
            'peak_memory_mb': round(summary['peak_memory_mb'], 1),
            'memory_kind': 'cuda max_memory_allocated' if device == 'cuda' else 'process peak RSS',
            'wall_s': round(time.time() - t0, 1), 'threads': torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--profiles', nargs='+', default=None, help='default: smoke quick (+ paper with a GPU)')
    p.add_argument('--methods', nargs='+', default=list(METHODS))
    p.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'train.json'))
    p.add_argument('--one', nargs=2, metavar=('METHOD', 'PROFILE'), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    if a.one:
        print(json.dumps(measure(a.one[0], a.one[1], STEPS[a.one[1]])))
        return 0
    import torch
    profiles = a.profiles or ['smoke', 'quick'] + (['paper'] if torch.cuda.is_available() else [])
    rows = []
    for prof in profiles:
        for m in a.methods:
            res = subprocess.run([sys.executable, __file__, '--one', m, prof], capture_output=True, text=True)
            row = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else \
                {'method': m, 'profile': prof, 'error': res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f'exit {res.returncode}'}
            print(json.dumps(row)); rows.append(row)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.exists() else {}
    keep = [r for r in old.get('results', []) if (r['method'], r['profile']) not in {(x['method'], x['profile']) for x in rows}]
    out.write_text(json.dumps({'machine': f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                               'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
                               'results': keep + rows}, indent=1))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
