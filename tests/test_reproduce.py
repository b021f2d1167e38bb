"""The main job end to end under `smoke`: every method, every evaluation, a report; and resuming skips finished steps."""
import json

import pytest

from elvis_nb.reproduce import METHODS, TASKS, reproduce


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('reproduce')
    log = []
    combined = reproduce(out, profile='smoke', seeds=(0,), device='cpu', log=lambda *a, **k: log.append(' '.join(map(str, a))))
    return out, combined, log


def test_every_method_and_task_reported(run):
    out, combined, _ = run
    assert set(combined) == {*METHODS, 'random'}
    for method in METHODS:
        assert set(combined[method]) == {'pretrain', *TASKS.values()}, method
    results = json.loads((out / 'results.json').read_text())
    assert results['meta']['seeds'] == [0] and results['meta']['profile'] == 'smoke'


def test_report_contents(run):
    out, combined, _ = run
    md = (out / 'report.md').read_text()
    html = (out / 'report.html').read_text()
    assert "not the paper's numbers" in md
    for method in METHODS: assert f'| {method} |' in md
    for experiment in TASKS.values(): assert f'### {experiment}' in md
    assert '(1) |' in md, 'each number must say how many seeds stand behind it'
    assert md.count('![') >= 3 and html.count('data:image/png;base64,') == md.count('![')
    assert "The papers' published numbers" in md
    assert '| method | CNR | mIoU | peak in box | peak in box by chance |' in md, 'headline columns, not raw keys'
    assert '## Side by side' in md and (out / 'comparisons' / 'eval_grounding_grounding_0.png').exists()
    assert (out / 'comparisons' / 'pretrain_loss_curves.png').exists()


def test_rerun_resumes(run):
    out, combined, _ = run
    log = []
    again = reproduce(out, profile='smoke', seeds=(0,), device='cpu', log=lambda *a, **k: log.append(' '.join(map(str, a))))
    skipped = [l for l in log if 'already done, skipped' in l]
    assert len(skipped) == 1 + len(METHODS) * (1 + len(TASKS)) + len(TASKS)
    assert again == combined
