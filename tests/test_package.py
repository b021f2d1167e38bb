"""The package as a user gets it: `python -m build` makes a wheel and an sdist that pass `twine check`, and the
wheel, installed into a fresh environment without the checkout, runs the main job under `smoke` from an empty folder
to its report, with a clean console (one line per step, no kernel noise)."""
import json, os, re, shutil, subprocess, sys, sysconfig, time, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = {}                                                     # seconds of each stage, printed by the last test
SKIP = shutil.ignore_patterns('.git', '.venv', 'build', 'dist', '*.egg-info', '__pycache__', 'runs', '_docs', '_proc',
                              '_preview', '.pytest_cache', 'bench')


def _timed(stage: str, cmd: list, **kw) -> subprocess.CompletedProcess:
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    TIMINGS[stage] = round(time.time() - t0, 1)
    assert r.returncode == 0, f'{stage} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r


@pytest.fixture(scope='module')
def dist(tmp_path_factory):
    "sdist and wheel built by `python -m build` (sdist first, the wheel from the sdist) from a copy of the checkout."
    tmp = tmp_path_factory.mktemp('dist')
    src = tmp / 'src'
    shutil.copytree(ROOT, src, ignore=SKIP)
    _timed('build', [sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(tmp / 'dist'), str(src)])
    return {p.suffix: p for p in (tmp / 'dist').iterdir()} | {'.gz': next((tmp / 'dist').glob('*.tar.gz'))}


def test_twine_check(dist):
    r = _timed('twine check', [sys.executable, '-m', 'twine', 'check', '--strict', str(dist['.whl']), str(dist['.gz'])])
    assert r.stdout.count('PASSED') == 2, r.stdout


def test_wheel_carries_what_the_commands_need(dist):
    names = set(zipfile.ZipFile(dist['.whl']).namelist())
    experiments = sorted(p.name for p in (ROOT / 'nbs' / 'experiments').glob('*.ipynb'))
    for name in experiments: assert f'elvis_nb/_data/nbs/experiments/{name}' in names, name
    for p in (ROOT / 'data_samples' / 'tokenizer-synthcxr').iterdir():
        assert f'elvis_nb/_data/data_samples/tokenizer-synthcxr/{p.name}' in names, p.name
    assert 'elvis_nb/_data/data_samples/synth_reference.json' in names
    assert not any(n.startswith('elvis_nb/_data/nbs/0') for n in names), 'only the experiments, not the chapters'


@pytest.fixture(scope='module')
def installed(dist, tmp_path_factory):
    """A fresh virtual environment holding the wheel (`pip install --no-deps`) and no trace of the checkout.

    Installing torch and the rest anew would cost minutes, so the environment borrows this environment's
    site-packages through a `.pth` line (a path line: the `.pth` files there, among them the editable install's
    finder of the checkout, are not run), after its own site-packages, where the wheel's `elvis_nb` is."""
    venv = tmp_path_factory.mktemp('venv') / 'env'
    _timed('venv', [sys.executable, '-m', 'venv', '--without-pip', str(venv)])
    py = venv / 'bin' / 'python'
    site = Path(subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / 'zz_borrowed_dependencies.pth').write_text(sysconfig.get_path('purelib') + '\n')
    _timed('pip install wheel', [sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index',
                                 '--disable-pip-version-check', str(dist['.whl'])])
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME')}
    env.update(PATH=f"{venv / 'bin'}:/usr/bin:/bin", HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
               ELVIS_NB_CACHE=str(tmp_path_factory.mktemp('cache')))   # nothing generated earlier, no tokenizer cached
    return venv, env


def test_installed_package_is_the_wheel(installed, tmp_path):
    venv, env = installed
    r = subprocess.run([str(venv / 'bin' / 'python'), '-c', 'import elvis_nb, elvis_nb.core as c; print(elvis_nb.__file__); '
                        'print(c.repo_root())'], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    file, root = r.stdout.split()
    assert Path(file).is_relative_to(venv) and not Path(file).is_relative_to(ROOT), file
    assert Path(root) == Path(file).parent / '_data', root
    version = subprocess.run([str(venv / 'bin' / 'elvis-nb'), '--version'], env=env, capture_output=True, text=True)
    expected = re.search(r'^version = (\S+)', (ROOT / 'settings.ini').read_text(), re.M).group(1)
    assert version.returncode == 0 and version.stdout.strip() == f'elvis-nb {expected}', version
    docs = subprocess.run([str(venv / 'bin' / 'elvis-nb'), 'docs'], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert docs.returncode == 1 and 'renders the notebooks of a source checkout' in docs.stderr, docs


@pytest.fixture(scope='module')
def smoke(installed, tmp_path_factory):
    "`elvis-nb reproduce --profile smoke` with the installed wheel, from an empty folder: (folder, stdout, stderr)."
    venv, env = installed
    cwd = tmp_path_factory.mktemp('empty')
    assert not any(cwd.iterdir())
    r = _timed('reproduce smoke', [str(venv / 'bin' / 'elvis-nb'), 'reproduce', '--profile', 'smoke', '--out', 'run'],
               cwd=cwd, env=env)
    return cwd, r.stdout, r.stderr


def test_reproduce_from_the_wheel(smoke):
    cwd, stdout, _ = smoke
    assert (cwd / 'run' / 'report.html').exists() and (cwd / 'run' / 'report.md').exists()
    meta = json.loads((cwd / 'run' / 'results.json').read_text())['meta']
    assert meta['profile'] == 'smoke'
    assert 'SynthCXR reference' in (cwd / 'run' / 'report.md').read_text(), 'the packaged reference bounds reached the report'


def test_console_is_clean(smoke):
    cwd, stdout, stderr = smoke
    for text in (stdout, stderr):
        for noise in ('IPKernelApp', 'KeyboardInterrupt', 'WARNING', 'Traceback'): assert noise not in text, (noise, text[-2000:])
    lines = stdout.splitlines()
    n = int(re.match(r'elvis_nb reproduce: (\d+) steps', lines[0]).group(1))
    steps = [l for l in lines if re.match(r'\[\d+/\d+\] ', l)]
    assert len(steps) == n and all(f'/{n}] ' in l and ' done in ' in l for l in steps), steps
    assert len({l.split()[1] for l in steps}) == n, 'one line per step'
    assert lines[-1] == f"report: {cwd / 'run' / 'report.html'}" and len(lines) == n + 2, lines
    assert f'{n}/{n} steps [' in stderr, 'the overall bar ends full, with elapsed and remaining time'
    print('timings (s):', TIMINGS)
