"""SynthCXR generation speed: images per second on one core, on the fly and from the disk cache.

Usage: `python bench/synth.py [--n 100]` from the repository root; writes bench/results/synth.json.
One process, one thread (OMP/MKL/OpenBLAS set to 1 before numpy loads), timed in CPU seconds
(`time.process_time`), so the numbers are per core even on a busy shared machine.
`quick` training (128 px, batch 32) takes roughly 0.5–1 s a step: it needs 32–64 images/s, which the
rendering must exceed on one core (or spread over DataLoader workers).
The CT renderer (`renderer='ct'`, chapter 14) is timed the same way after its one-off load (also recorded), and its
rate is compared with the `quick` training rates of bench/results/train.json (the issue asks for ≥ 10×). Skipped,
with the reason, where the CT cannot be fetched.
"""
import os
for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'): os.environ[v] = '1'
import argparse, json, platform, tempfile, time
from pathlib import Path

import torch

from elvis_nb.core import WheelUnavailable
from elvis_nb.data.synth import SynthPretrain, SynthGrounding, report_corpus

torch.set_num_threads(1)


def rate(ds, n: int) -> float:
    "Items per CPU second of ds[0..n): CPU time of this one-thread process, so the machine's load does not count."
    t = time.process_time()
    for i in range(n): ds[i]
    return n / (time.process_time() - t)


def main(n: int = 100) -> dict:
    out = {'items': n, 'python': platform.python_version(), 'machine': platform.machine(),
           'cpu_count': os.cpu_count(), 'load_average_1min': os.getloadavg()[0], 'images_per_s_per_core': {}}
    out['contended'] = out['load_average_1min'] > (os.cpu_count() or 1)   # more runnable work than cores: CPU time still counts one core
    t = time.process_time(); report_corpus(n); out['reports_per_s_per_core'] = round(n / (time.process_time() - t), 1)
    with tempfile.TemporaryDirectory() as tmp:
        for size in (64, 128, 224, 299):
            r = {'on_the_fly': rate(SynthPretrain('train', 'quick', size=size, n=n), n)}
            cached = SynthPretrain('train', 'quick', size=size, n=n, cache=tmp)
            r['cache_write'] = rate(cached, n)
            r['cached'] = rate(cached, n)
            r['grounding_on_the_fly'] = rate(SynthGrounding('test', 'quick', size=size, n=n), n)
            out['images_per_s_per_core'][str(size)] = {k: round(v, 1) for k, v in r.items()}
    q = out['images_per_s_per_core']['128']['on_the_fly']
    out['quick_needs_images_per_s'] = 64
    out['quick_ok_on_one_core'] = q >= 64
    out['ct'] = ct_rates(n)
    return out


def ct_rates(n: int) -> dict:
    "The CT renderer's load time and images per CPU second (on the fly, cache write, cached) at 128 and 224 px."
    from elvis_nb.data import drr
    t = time.process_time()
    try: drr.ct_renderer()
    except WheelUnavailable as e: return {'skipped': f'the CT cannot be fetched here: {e}'}
    out = {'load_cpu_s': round(time.process_time() - t, 1), 'images_per_s_per_core': {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (128, 224):
            r = {'on_the_fly': rate(SynthPretrain('train', 'quick', size=size, n=n, renderer='ct'), n)}
            cached = SynthPretrain('train', 'quick', size=size, n=n, cache=tmp, renderer='ct')
            r['cache_write'] = rate(cached, n)
            r['cached'] = rate(cached, n)
            r['grounding_on_the_fly'] = rate(SynthGrounding('test', 'quick', size=size, n=n, renderer='ct'), n)
            out['images_per_s_per_core'][str(size)] = {k: round(v, 1) for k, v in r.items()}
    train = Path(__file__).parent / 'results' / 'train.json'
    quick = [row['pairs_per_s'] for row in json.loads(train.read_text())['results'] if row['profile'] == 'quick'] if train.exists() else []
    if quick:
        out['quick_training_pairs_per_s'] = max(quick)
        out['times_quick_training_rate'] = round(out['images_per_s_per_core']['128']['on_the_fly'] / max(quick), 1)
    out['quick_ok_on_one_core'] = out['images_per_s_per_core']['128']['on_the_fly'] >= 64
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--n', type=int, default=100)
    res = main(ap.parse_args().n)
    path = Path(__file__).parent / 'results' / 'synth.json'
    path.write_text(json.dumps(res, indent=1)); print(json.dumps(res, indent=1))
