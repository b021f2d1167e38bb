"""Wall time of the main job (issue 8: `quick` on 2 CPU cores in at most 20 minutes with one seed, install aside).

Usage: `python bench/reproduce.py [--profile quick] [--jobs N]` from the repository root, on an otherwise idle
machine (the target is wall time); writes bench/results/reproduce_<profile>.json with the total, the time of
every step, and the machine. It renders SynthCXR into a fresh cache, as a first run on a new machine does.
"""
import argparse, json, os, platform, tempfile, time
from pathlib import Path


def main(profile: str = 'quick', jobs: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ['ELVIS_NB_CACHE'] = str(Path(tmp) / 'cache')          # no rendered images from earlier runs
        from elvis_nb.reproduce import default_jobs, reproduce
        t0 = time.time()
        reproduce(Path(tmp) / 'run', profile=profile, jobs=jobs)
        total = time.time() - t0
    return {'profile': profile, 'jobs': jobs or default_jobs(), 'total_seconds': round(total, 1),
            'target_seconds': 20 * 60 if profile == 'quick' else None,
            'python': platform.python_version(), 'cpu_count': os.cpu_count(), 'load_average_1min_after': os.getloadavg()[0]}


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--profile', default='quick')
    ap.add_argument('--jobs', type=int, default=None)
    a = ap.parse_args()
    res = main(a.profile, a.jobs)
    out = Path(__file__).parent / 'results' / f'reproduce_{a.profile}.json'
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res), '->', out)
