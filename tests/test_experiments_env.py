"""papermill drives the experiment notebooks; a parameter survives nbdev_clean and really reaches the notebook."""
import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def test_parameters_cell_is_tagged_in_every_experiment():
    for nb_path in (ROOT / 'nbs' / 'experiments').glob('*.ipynb'):
        nb = nbformat.read(nb_path, as_version=4)
        tagged = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
        assert len(tagged) == 1, f'{nb_path.name}: needs exactly one cell tagged `parameters`'
        assert 'import' not in tagged[0].source and '#| export' not in tagged[0].source, nb_path.name


def test_papermill_reads_every_parameter():
    "papermill must parse every line of each parameters cell (a quote or an `=` in a comment hides the parameter)."
    import ast
    from papermill.inspection import inspect_notebook
    for nb_path in sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb')):
        cell = next(c for c in nbformat.read(nb_path, as_version=4).cells if 'parameters' in c.metadata.get('tags', []))
        assigned = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
        assert set(inspect_notebook(str(nb_path))) == assigned, nb_path.name


def test_parameters_read_without_a_kernel_match_papermill():
    "The runner reads each parameters cell with `ast` (fast, no kernel); papermill must see the same names and defaults."
    import ast
    from papermill.inspection import inspect_notebook
    from elvis_nb.runner import notebook_parameters
    for nb_path in sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb')):
        ours = notebook_parameters(nb_path)
        theirs = {k: ast.literal_eval(v['default']) for k, v in inspect_notebook(str(nb_path)).items()}
        assert ours == theirs, nb_path.name


def test_parameter_reaches_notebook(tmp_path):
    "The default profile is 'quick'; papermill's value must win over it."
    from elvis_nb.runner import run_experiment
    res = run_experiment('environment', tmp_path, profile='smoke', seed=11)
    assert res['profile']['name'] == 'smoke' and res['seed'] == 11
    executed = nbformat.read(tmp_path / 'environment.ipynb', as_version=4)
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in executed.cells)


def test_cli_run(tmp_path):
    from elvis_nb.cli import main
    "`-p` sets any parameter, `profile` included (it once clashed with --profile's default)."
    assert main(['run', 'environment', '--out', str(tmp_path), '-p', 'profile', 'smoke', '-p', 'seed', '4']) == 0
    res = json.loads((tmp_path / 'results.json').read_text())
    assert res['seed'] == 4 and res['profile']['name'] == 'smoke'
