"""The package is in sync with the notebooks, the notebooks are clean, and README.md comes from index.ipynb."""
import filecmp, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def copy(tmp_path_factory):
    "A copy of the source tree, so the checks never touch the working tree."
    d = tmp_path_factory.mktemp('repo')
    for name in ('settings.ini', 'setup.py', '_quarto.yml', 'README.md'):
        shutil.copy(ROOT / name, d / name)
    for name in ('nbs', 'elvis_nb'):
        shutil.copytree(ROOT / name, d / name, symlinks=True, ignore=shutil.ignore_patterns('__pycache__'))
    return d


def _run(cmd, cwd):
    env_bin = Path(sys.executable).parent
    r = subprocess.run([str(env_bin / cmd[0]), *cmd[1:]], cwd=cwd, capture_output=True, text=True,
                       env={'IN_TEST': '', 'PATH': f'{env_bin}:/usr/bin:/bin', 'HOME': str(cwd)})
    assert r.returncode == 0, r.stderr


def _diff(a: Path, b: Path, pattern: str) -> list[str]:
    "Relative paths matching `pattern` that differ between trees `a` and `b` (missing counts as different)."
    names = {p.relative_to(a) for p in a.rglob(pattern)} | {p.relative_to(b) for p in b.rglob(pattern)}
    return sorted(str(n) for n in names if '__pycache__' not in str(n)
                  and not ((a / n).exists() and (b / n).exists() and filecmp.cmp(a / n, b / n, shallow=False)))


def test_package_in_sync_with_notebooks(copy):
    _run(['nbdev_export'], copy)
    changed = _diff(ROOT / 'elvis_nb', copy / 'elvis_nb', '*.py')
    assert not changed, f'elvis_nb/ is out of sync with nbs/ (run nbdev_export): {changed}'


def test_notebooks_clean(copy):
    _run(['nbdev_clean'], copy)
    changed = _diff(ROOT / 'nbs', copy / 'nbs', '*.ipynb')
    assert not changed, f'notebooks not clean (run nbdev_clean): {changed}'


def test_readme_from_index(copy):
    sys.path.insert(0, str(ROOT))
    from elvis_nb.docs import write_readme
    write_readme(copy)
    assert (copy / 'README.md').read_text() == (ROOT / 'README.md').read_text(), \
        'README.md differs from nbs/index.ipynb (run `elvis-nb readme`)'


def test_ci_runs_the_readme_test_command():
    "CI must run the README's second command verbatim, so a green CI means the README works."
    readme = (ROOT / 'README.md').read_text()
    commands = [l.strip() for l in readme.splitlines() if l.strip().startswith('python3.11 -m venv')]
    assert len(commands) == 2, commands
    assert commands[1] in (ROOT / '.ci' / 'run').read_text()
