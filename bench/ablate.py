"""Wall time and findings of an ablation: `elvis-nb ablate` at `quick` with three seeds on 2 CPU cores.

Usage: `python bench/ablate.py [--profile quick] [--grid small|default | --axes AXIS[=V1,V2] ...] [--seeds 0 1 2]
[--jobs N] [--renderer ct] [--report-style indiana] [--keep DIR]` from the repository root, on an otherwise idle machine (the number is wall time). `--keep` a
folder where `elvis-nb reproduce` ran already, and ELVIS's and GLoRIA's steps are reused (the file says so). Writes
bench/results/ablation_<profile>.json: the seeds, the total, the grid, every variant's effect on every metric against
the default ELVIS and against GLoRIA with its 95 % interval and whether it changes beyond the seed noise, the answer
per axis, the seconds of every step, which steps an earlier run had done (their seconds are not in the total), and the
machine (with its load, since a shared machine inflates every number).
"""
import argparse, json, os, platform, tempfile, time
from pathlib import Path


def step_accounting(run: Path, steps: dict, t0: float) -> dict:
    "How the grid's step seconds split between this run and steps an earlier run into `run` had finished (step.json older than t0)."
    earlier = sorted(k for k in steps if (run / k / 'step.json').stat().st_mtime < t0)
    seconds = lambda keys: round(sum(steps[k].get('wall_seconds') or 0 for k in keys), 1)
    return {'steps_done_earlier': earlier, 'earlier_step_seconds': seconds(earlier),
            'serial_step_seconds': seconds(steps), 'n_steps': len(steps)}


def main(profile: str = 'quick', grid_name: str = 'small', axes=None, seeds=(0, 1, 2), jobs: int | None = None,
         keep: str = '', tasks=None, renderer: str = 'cartoon', report_style: str = 'template') -> dict:
    from elvis_nb.ablate import ABLATION_TASKS, GRIDS, ablate, parse_axes
    from elvis_nb.reproduce import default_jobs
    grid, tasks = (parse_axes(axes) if axes else GRIDS[grid_name]), tuple(tasks or ABLATION_TASKS)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(keep) if keep else Path(tmp) / 'run'
        reused = (run / 'seed0' / 'elvis' / 'pretrain' / 'step.json').exists()
        t0 = time.time()
        res = ablate(run, profile=profile, grid=grid, seeds=seeds, jobs=jobs, tasks=tasks, renderer=renderer, report_style=report_style)
        total = time.time() - t0
        accounting = step_accounting(run, res['steps'], t0)
    effects: dict = {}
    for e in res['effects']:
        effects.setdefault(e['row'], {}).setdefault(e['versus'], {})[e['metric']] = {
            k: e[k] for k in ('effect', 'lo', 'hi', 'n_seeds', 'change', 'mean', 'mean_versus', 'interval')}
    return {'profile': profile, 'renderer': renderer, 'report_style': report_style, 'seeds': list(seeds), 'jobs': jobs or default_jobs(), 'total_seconds': round(total, 1),
            'target_seconds': 20 * 60 if profile == 'quick' and grid_name == 'small' and not axes else None,
            'grid_name': None if axes else grid_name, 'grid': res['meta']['grid'], 'tasks': list(tasks),
            'n_variants': res['meta']['n_variants'], 'skipped_axes': res['skipped_axes'],
            'comparators_reused': reused, **accounting, 'changes_beyond_seed_noise': res['changes'], 'effects': effects,
            'step_seconds': {k: r.get('wall_seconds') for k, r in res['steps'].items()},
            'python': platform.python_version(), 'cpu_count': os.cpu_count(), 'load_average_1min_before': load_before,
            'load_average_1min_after': os.getloadavg()[0], 'contended': load_before > 0.5}


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--profile', default='quick')
    ap.add_argument('--grid', default='small', help='named grid (elvis_nb.ablate.GRIDS)')
    ap.add_argument('--axes', nargs='+', default=None, help='AXIS or AXIS=V1,V2 instead of --grid')
    ap.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    ap.add_argument('--jobs', type=int, default=None)
    ap.add_argument('--tasks', nargs='+', default=None)
    ap.add_argument('--renderer', default='cartoon', help="SynthCXR renderer: 'cartoon' or 'ct'")
    ap.add_argument('--report-style', default='template', help="SynthCXR reports: 'template' or 'indiana'")
    ap.add_argument('--keep', default='', help='run into this folder and keep it (default: a temporary one)')
    a = ap.parse_args()
    res = main(a.profile, a.grid, a.axes, tuple(a.seeds), a.jobs, a.keep, a.tasks, a.renderer, a.report_style)
    suffix = ('' if a.renderer == 'cartoon' else f'_{a.renderer}') + ('' if a.report_style == 'template' else f'_{a.report_style}')
    out = Path(__file__).parent / 'results' / f'ablation_{a.profile}{suffix}.json'
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ('profile', 'seeds', 'total_seconds', 'grid', 'changes_beyond_seed_noise')}), '->', out)
