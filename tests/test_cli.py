"""`elvis-nb` answers a user's mistake with one readable line and a non-zero exit, fast, before any kernel starts;
`--debug` shows the traceback; a failed run is marked as failed and never taken for a finished step."""
import json, subprocess, sys, time
from pathlib import Path

import pytest

from elvis_nb.cli import main
from elvis_nb.reproduce import Step, run_step, step_done
from elvis_nb.runner import FAILED, ExperimentError

TIMES = {}                                                        # seconds per failing command, recorded for the report


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    "Run `elvis-nb args` as the console script does, timed."
    t0 = time.time()
    r = subprocess.run([sys.executable, '-c', 'import sys; from elvis_nb.cli import main; sys.exit(main())', *args],
                       capture_output=True, text=True, cwd=cwd, timeout=120)
    TIMES[' '.join(args)] = round(time.time() - t0, 2)
    return r


def test_version():
    r = cli('--version')
    import elvis_nb
    assert r.returncode == 0 and r.stdout.strip() == f'elvis-nb {elvis_nb.__version__}'


@pytest.mark.parametrize('args, says', [
    (('run', 'nope'), "no experiment notebook 'nope.ipynb'"),
    (('run', 'environment', '-p', 'sede', '3'), "no parameter 'sede'; its parameters (with their defaults): profile='quick', seed=0"),
    (('run', 'environment', '-p', 'seed', 'three'), "'seed' of experiment 'environment' takes a int (default 0), not 'three'"),
    (('reproduce', '--data-root', '/no/such/folder'), "data root '/no/such/folder' does not exist"),
    (('reproduce', '--methods', 'clip'), "unknown method(s) ['clip']"),
])
def test_mistake_is_one_line(args, says, tmp_path):
    r = cli(*args, '--out', str(tmp_path / 'out'), cwd=tmp_path)
    assert r.returncode == 1, r
    assert r.stderr.count('\n') == 1 and says in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'out').exists() or args[0] == 'reproduce', 'nothing is created for a refused run'
    assert TIMES[' '.join((*args, '--out', str(tmp_path / 'out')))] < 5, TIMES   # the bound; typical: ~1-2 s


def test_debug_shows_traceback(tmp_path):
    r = cli('run', 'nope', '--out', str(tmp_path / 'o'), '--debug')
    assert r.returncode == 1 and 'Traceback' in r.stderr and "no experiment notebook 'nope.ipynb'" in r.stderr


def test_data_error_is_one_line(monkeypatch, capsys):
    "A data problem (`DataError`, raised by the real-data adapters) is an expected error too."
    from elvis_nb.data.transforms import DataError
    import elvis_nb.cli as cli_module
    def broken(args): raise DataError("/data/siim/train.csv, row 3, field 'EncodedPixels': negative run length -4")
    monkeypatch.setattr(cli_module, 'command', broken)
    assert main(['reproduce']) == 1
    err = capsys.readouterr().err
    assert err == "elvis-nb reproduce: error: /data/siim/train.csv, row 3, field 'EncodedPixels': negative run length -4\n"
    with pytest.raises(DataError): main(['reproduce', '--debug'])


def test_failed_run_is_marked(tmp_path):
    "A notebook that raises: a short error naming the executed notebook, a FAILED marker, no results.json."
    out = tmp_path / 'env'
    r = cli('run', 'environment', '--out', str(out), '-p', 'profile', 'huge')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert "failed in cell" in r.stderr and "unknown profile 'huge'" in r.stderr and str(out / 'environment.ipynb') in r.stderr
    message = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith('Executing:')]  # papermill's cell bar
    assert len(message) == 2 and message[0].startswith('elvis-nb run: error: '), r.stderr
    assert 'IPKernelApp' not in r.stderr and 'KeyboardInterrupt' not in r.stderr, r.stderr
    assert (out / FAILED).exists() and not (out / 'results.json').exists()
    executed = json.loads((out / 'environment.ipynb').read_text())
    assert any(o.get('output_type') == 'error' for c in executed['cells'] for o in c.get('outputs', [])), 'full log kept'


def test_failed_step_is_not_done_on_resume(tmp_path):
    step = Step('environment', 'seed0/environment', dict(profile='huge'))
    with pytest.raises(ExperimentError, match='executed notebook'): run_step(step, tmp_path)
    d = tmp_path / step.key
    assert (d / FAILED).exists() and not (d / 'step.json').exists()
    assert not step_done(step, tmp_path)
    print('seconds per refused command:', TIMES)
