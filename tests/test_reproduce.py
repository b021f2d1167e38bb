"""The main job end to end under `smoke` with two seeds: every method, every evaluation, the claims judged over the
seeds, a report that opens with the generated summary and the claims table; and resuming skips finished steps."""
import json, os, subprocess, sys

import pytest

from elvis_nb.eval.claims import VERDICTS
from elvis_nb.core import METHOD_NAMES as METHODS
from elvis_nb.reproduce import TASKS, THREAD_VARIABLES, kernel_threads, reproduce

SEEDS = (0, 1)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('reproduce')
    log = []
    combined = reproduce(out, profile='smoke', seeds=SEEDS, device='cpu', log=lambda *a, **k: log.append(' '.join(map(str, a))))
    return out, combined, log


def test_every_method_and_task_reported(run):
    out, combined, _ = run
    assert set(combined) == {*METHODS, 'random'}
    for method in METHODS:
        assert set(combined[method]) == {'pretrain', *TASKS.values()}, method
    results = json.loads((out / 'results.json').read_text())
    assert results['meta']['seeds'] == list(SEEDS) and results['meta']['profile'] == 'smoke'
    assert combined['elvis']['eval_grounding']['cnr']['n'] + combined['elvis']['eval_grounding']['cnr']['excluded'] == 2


def test_claims_judged_over_the_seeds(run):
    out, _, _ = run
    results = json.loads((out / 'results.json').read_text())
    claims = results['claims']
    assert len(claims) >= 5 and all(c['verdict'] in VERDICTS for c in claims)
    assert all(c['n_seeds'] <= len(SEEDS) for c in claims) and any(c['n_seeds'] == len(SEEDS) for c in claims)
    assert any('label fractions' in why for why in results['claims_skipped'].values()), 'smoke segments at 100 % only'


def test_report_contents(run):
    out, _, _ = run
    md = (out / 'report.md').read_text()
    html = (out / 'report.html').read_text()
    summary = md.split('## Summary\n\n')[1].split('\n')[0]
    results = json.loads((out / 'results.json').read_text())
    n_reproduced = sum(c['verdict'] == 'reproduced' for c in results['claims'])
    assert summary.startswith(f"On SynthCXR, {n_reproduced} of {len(results['claims'])} claims of the papers reproduced over 2 seeds")
    assert 'inconclusive' in summary and 'SynthCXR can show' in summary, summary
    assert md.index('## Summary') < md.index('## The claims') < md.index('## Our results'), 'the claims come first'
    assert '![claims](claims.png)' in md and (out / 'claims.png').exists()
    claims_table = md.split('## The claims')[1].split('## Our results')[0]
    assert '| claim | paper | A vs B |' in claims_table and any(f'**{v}**' in claims_table for v in VERDICTS)
    assert "not the paper's numbers" in md
    for method in METHODS: assert f'| {method} |' in md
    for experiment in TASKS.values(): assert f'### {experiment}' in md
    assert ' (2) |' in md, 'each number must say how many seeds stand behind it'
    assert md.count('![') >= 4 and html.count('data:image/png;base64,') == md.count('![')
    assert "The papers' published numbers" in md and '**References**' in md and 'seed 00' not in md
    assert '| method | CNR | mIoU | peak in box | peak in box by chance |' in md, 'headline columns, not raw keys'
    assert '## Side by side' in md and (out / 'comparisons' / 'eval_grounding_grounding_0.png').exists()
    assert (out / 'comparisons' / 'pretrain_loss_curves.png').exists()


def test_rerun_resumes(run):
    out, combined, _ = run
    log = []
    again = reproduce(out, profile='smoke', seeds=SEEDS, device='cpu', log=lambda *a, **k: log.append(' '.join(map(str, a))))
    skipped = [l for l in log if 'already done, skipped' in l]
    assert len(skipped) == 1 + len(SEEDS) * (len(METHODS) * (1 + len(TASKS)) + len(TASKS))
    assert json.dumps(again, sort_keys=True) == json.dumps(combined, sort_keys=True)   # NaN == NaN as text


def test_numba_keeps_the_workers_thread_count():
    "UMAP's numba pool, started in a worker, must not raise torch's threads above the worker's share (2×2 threads on 2 cores ran 3–6× slower)."
    saved = {k: os.environ.pop(k) for k in THREAD_VARIABLES if k in os.environ}   # as a user who set none of them
    try:
        with kernel_threads(1): env = dict(os.environ)
    finally: os.environ.update(saved)
    assert {env[k] for k in THREAD_VARIABLES} == {'1'}
    code = 'import torch, numba; numba.get_num_threads(); print(torch.get_num_threads(), numba.get_num_threads())'
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ['1', '1'], out
