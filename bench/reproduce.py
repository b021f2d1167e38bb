"""Wall time of the main job: the three-seed `quick` reproduction on 2 CPU cores in at most 20 minutes, install aside.

Usage: `python bench/reproduce.py [--profile quick] [--seeds 0 1 2] [--jobs N] [--methods ...] [--tasks ...]` from
the repository root, on an otherwise idle machine (the target is wall time). It renders SynthCXR into a fresh cache,
as a first run on a new machine does, and writes bench/results/reproduce_<profile>.json: the seeds, the total, the
seconds of every step (the time its notebook ran, inside the worker), each claim with its verdict, and the machine.
A subset (`--methods elvis --seeds 0`) times a part of the job; its file says so (`subset`). `--renderer ct` runs it on
the CT renderer (chapter 14) into reproduce_<profile>_ct.json, `--report-style indiana` with the Indiana reports'
phrasing (chapter 15) into reproduce_<profile>_indiana.json.
"""
import argparse, json, os, platform, tempfile, time
from pathlib import Path


def main(profile: str = 'quick', seeds=(0, 1, 2), jobs: int | None = None, methods=None, tasks=None, keep: str = '',
         renderer: str = 'cartoon', report_style: str = 'template') -> dict:
    from elvis_nb.core import METHOD_NAMES as METHODS
    from elvis_nb.reproduce import TASKS
    methods, tasks = tuple(methods or METHODS), tuple(tasks or TASKS)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ['ELVIS_NB_CACHE'] = str(Path(tmp) / 'cache')          # no rendered images from earlier runs
        from elvis_nb.reproduce import THREAD_VARIABLES, default_jobs, reproduce
        run = Path(keep) if keep else Path(tmp) / 'run'                  # --keep DIR: the run (report, figures) stays
        t0, load_before = time.time(), os.getloadavg()[0]
        reproduce(run, profile=profile, seeds=seeds, jobs=jobs, methods=methods, tasks=tasks, renderer=renderer, report_style=report_style)
        total = time.time() - t0
        results = json.loads((run / 'results.json').read_text())
    return {'profile': profile, 'renderer': renderer, 'report_style': report_style, 'seeds': list(seeds), 'jobs': jobs or default_jobs(), 'total_seconds': round(total, 1),
            'target_seconds': 20 * 60 if profile == 'quick' else None,
            'subset': None if (methods, tasks) == (tuple(METHODS), tuple(TASKS)) else {'methods': list(methods), 'tasks': list(tasks)},
            'step_seconds': {k: r.get('wall_seconds') for k, r in results['steps'].items()},
            'experiment_seconds': experiment_seconds(results['steps']),
            'claims': [{'name': c['name'], 'verdict': c['verdict'], 'effect': c['effect'], 'lo': c['lo'], 'hi': c['hi'],
                        'n_seeds': c['n_seeds']} for c in results['claims']],
            'claims_skipped': results['claims_skipped'],
            'python': platform.python_version(), 'cpu_count': os.cpu_count(), 'load_average_1min_before': load_before,
            'load_average_1min_after': os.getloadavg()[0],
            'thread_variables_set_by_user': {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}}


def experiment_seconds(steps: dict) -> dict:
    "Summed step seconds per experiment (the notebook of each step key `seed/row/experiment`), largest first."
    total = {}
    for key, r in steps.items():
        name = key.split('/')[-1]
        total[name] = round(total.get(name, 0) + (r.get('wall_seconds') or 0), 1)
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--profile', default='quick')
    ap.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    ap.add_argument('--jobs', type=int, default=None)
    ap.add_argument('--methods', nargs='+', default=None)
    ap.add_argument('--tasks', nargs='+', default=None)
    ap.add_argument('--renderer', default='cartoon', help="SynthCXR renderer: 'cartoon' or 'ct'")
    ap.add_argument('--report-style', default='template', help="SynthCXR reports: 'template' or 'indiana'")
    ap.add_argument('--keep', default='', help='run into this folder and keep it (default: a temporary one)')
    a = ap.parse_args()
    res = main(a.profile, tuple(a.seeds), a.jobs, a.methods, a.tasks, a.keep, a.renderer, a.report_style)
    name = f'reproduce_{a.profile}' + ('' if a.renderer == 'cartoon' else f'_{a.renderer}') + ('' if a.report_style == 'template' else f'_{a.report_style}') + ('' if res['subset'] is None and res['seeds'] == [0, 1, 2] else '_subset')
    out = Path(__file__).parent / 'results' / f'{name}.json'
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ('profile', 'seeds', 'total_seconds', 'subset')}), '->', out)
