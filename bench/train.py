"""Training throughput (pairs/s), peak memory and the data-loading share of step time, per method and profile.

    python bench/train.py                      # smoke and quick on CPU; paper too when a GPU is visible
    python bench/train.py --profiles smoke     # a subset
Writes bench/results/train.json. Each (method, profile) runs in its own process so that peak memory is its own.
Numbers come from `elvis_nb.train.train` itself (its metrics rows), excluding the first step (warm-up).
"""
from __future__ import annotations
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

METHODS = ('convirt', 'gloria', 'elvis')
STEPS = {'smoke': 6, 'quick': 4, 'paper': 20}


def measure(method: str, profile: str, steps: int) -> dict:
    "Train `steps` optimiser steps of `method` under `profile` and return throughput and memory."
    import torch
    from elvis_nb.train import TrainConfig, train
    device = 'cuda' if profile == 'paper' else 'cpu'
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        r = train(TrainConfig(method=method, profile=profile, out_dir=d, device=device, max_steps=steps, epochs=10**6,
                              val_at_start=False, checkpoint_every=10**9, progress=False, n_val=8, synth_cache=False))
        rows = [row for row in r.history if row['split'] == 'train'][1:]   # drop the warm-up step
        summary = json.loads((Path(d) / 'train_summary.json').read_text())
    b = r.config['batch_size'] * r.config['grad_accum']
    sec = [b / row['pairs_per_s'] for row in rows]                           # seconds per step
    return {'method': method, 'profile': profile, 'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
            'precision': r.config['precision'], 'batch_size': b, 'steps_timed': len(rows),
            'pairs_per_s': round(b * len(rows) / sum(sec), 2),
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
