"""Responsiveness of the explorers (elvis_nb.explore): median milliseconds per interaction on quick-sized models.

    python bench/explorers.py --models RUN/elvis/pretrain/model RUN/gloria/pretrain/model RUN/convirt/pretrain/model
    python bench/explorers.py                   # no folder: trains ELVIS under `quick` once (a few minutes), cached
Writes bench/results/explorers.json:
- slider_ms: one τ_tgt slider move of TargetsExplorer (target, source, logits re-read and redrawn); target ≤ 200 ms;
- patch_slider_ms: one row-slider move of PatchExplorer over every model (the region pick); target ≤ 500 ms;
- word_ms: one word-slider move of WordExplorer; phrase_ms: one typed phrase in GroundingExplorer (a text forward);
- umap_open_s: building UmapExplorer once its UMAP cache exists (models reloaded, region features recomputed,
  the embedding read from disk); target ≤ 5 s. umap_first_open_s: the first opening, which fits UMAP.
Timings are the median over `--repeats` moves, after one warm-up move; `torch` uses `--threads` threads. `cpu` holds the
same medians in process CPU time: on a shared machine (`--contended`) wall time is inflated by other processes, while
CPU time is close to the wall time of the same move on an idle machine (the figure work is single-threaded).
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_checkpoint() -> str:
    "An ELVIS model trained under the quick profile, trained once into the kit's cache folder."
    from elvis_nb.core import cache_dir
    from elvis_nb.train import TrainConfig, train
    out = cache_dir() / 'bench' / 'explorers' / 'elvis_quick'
    if not (out / 'model' / 'config.json').exists():
        train(TrainConfig(method='elvis', profile='quick', out_dir=str(out), progress=False))
    return str(out / 'model')


CPU = {}   # name → median process CPU ms: on a shared, busy machine, close to what the move costs on an idle one


def median_ms(set_value, values, name: str = '') -> float:
    "Median wall time (ms) of set_value(v) over `values`, the first call excluded (warm-up); CPU time goes to CPU[name]."
    times, cpu = [], []
    for v in values:
        t, c = time.perf_counter(), time.process_time(); set_value(v)
        times.append((time.perf_counter() - t) * 1000); cpu.append((time.process_time() - c) * 1000)
    if name: CPU[name] = round(statistics.median(cpu[1:]), 1)
    return round(statistics.median(times[1:]), 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='*', default=None, help='checkpoint folders or method names (default: a quick ELVIS)')
    p.add_argument('--repeats', type=int, default=11)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--contended', action='store_true', help='mark the numbers as measured on a shared, busy machine')
    p.add_argument('--note', default='', help='how the models were made, anything a reader of the numbers should know')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'explorers.json'))
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from elvis_nb.eval import inspect
    from elvis_nb.explore import GroundingExplorer, PatchExplorer, TargetsExplorer, UmapExplorer, WordExplorer
    models = a.models or [quick_checkpoint(), 'gloria', 'convirt']
    n, res = a.repeats, {}
    tx = TargetsExplorer(models[:1])
    res['slider_ms'] = median_ms(lambda v: setattr(tx.tau_tgt, 'value', v), [0.02 + 0.03 * i for i in range(n + 1)], 'slider_ms')
    px = PatchExplorer(models)
    res['patch_slider_ms'] = median_ms(lambda v: setattr(px.row, 'value', v), [0.1 + 0.07 * i for i in range(n + 1)], 'patch_slider_ms')
    wx = WordExplorer(models)
    res['word_ms'] = median_ms(lambda v: setattr(wx.word, 'value', v), [i % 8 for i in range(n + 1)], 'word_ms')
    gx = GroundingExplorer(models)
    res['phrase_ms'] = median_ms(lambda v: setattr(gx.phrase, 'value', v), [f'opacity in the left lung {i}' for i in range(n + 1)], 'phrase_ms')
    errors = [x.message.value for x in (tx, px, wx, gx) if x.message.value]
    t = time.perf_counter(); ux = UmapExplorer(models); res['umap_first_open_s'] = round(time.perf_counter() - t, 2)
    inspect._open_cached.cache_clear()                          # the second opening loads the models again
    t, c = time.perf_counter(), time.process_time(); ux = UmapExplorer(models)
    res['umap_open_s'], CPU['umap_open_s'] = round(time.perf_counter() - t, 2), round(time.process_time() - c, 2)
    res['umap_point_ms'] = median_ms(lambda v: setattr(ux.point, 'value', v), [7 * i for i in range(n + 1)], 'umap_point_ms')
    errors += [ux.message.value] if ux.message.value else []
    out = {'machine': f'{platform.machine()}, {os.cpu_count()} CPUs', 'torch': torch.__version__, 'threads': a.threads,
           'date': time.strftime('%Y-%m-%d'), 'models': models, 'profile': inspect.open_method(models[0]).profile.name, 'repeats': n, 'contended': a.contended, 'note': a.note, **res, 'cpu': CPU,
           'targets': {'slider_ms': 200, 'click_ms': 500, 'umap_open_s': 5}, 'errors': errors}
    out['click_ms'] = res['patch_slider_ms']                    # a region pick (sliders) updates every model's maps
    CPU['click_ms'] = CPU['patch_slider_ms']
    out['meets_targets'] = {k: out[k] <= v for k, v in out['targets'].items()}
    out['meets_targets_cpu'] = {k: CPU[k] <= v for k, v in out['targets'].items()}   # wall time on an idle machine ≈ CPU time
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0 if not errors else 1


if __name__ == '__main__':
    sys.exit(main())
