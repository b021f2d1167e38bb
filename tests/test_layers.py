"""The lower floors of the package (losses, models, data, train) import no plotting library: a training job on a
head-less machine never loads matplotlib. Plot functions live in `elvis_nb.viz` or in non-exported chapter cells."""
import ast, pkgutil, subprocess, sys
from pathlib import Path

import pytest

import elvis_nb

ROOT = Path(elvis_nb.__file__).parent
def lower_modules() -> list[str]:
    "Every module of elvis_nb.losses, elvis_nb.models, elvis_nb.data, and elvis_nb.train."
    names = ['elvis_nb.train']
    for pkg in ('losses', 'models', 'data'):
        names += [f'elvis_nb.{pkg}.{m.name}' for m in pkgutil.iter_modules([str(ROOT / pkg)])]
    return sorted(names)


def imports_matplotlib(modules: list[str]) -> dict[str, bool]:
    "For each module, whether importing it (alone, in a fresh interpreter) loads matplotlib."
    code = ("import importlib, json, sys\n"
            "out = {}\n"
            f"for name in {modules!r}:\n"
            "    for k in [k for k in sys.modules if k.split('.')[0] in ('elvis_nb', 'matplotlib')]: del sys.modules[k]\n"
            "    importlib.import_module(name)\n"
            "    out[name] = 'matplotlib' in sys.modules\n"
            "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    return json.loads(r.stdout.strip().splitlines()[-1])


def module_level_imports(name: str) -> set[str]:
    "The top-level packages a module's source imports at module level (not inside functions)."
    path = ROOT.joinpath(*name.split('.')[1:]).with_suffix('.py')
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import): out |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level: out.add(node.module.split('.')[0])
    return out


@pytest.mark.parametrize('name', lower_modules())
def test_no_module_level_import(name):
    assert 'matplotlib' not in module_level_imports(name), f"{name} imports matplotlib at module level"


@pytest.fixture(scope='module')
def loaded() -> dict[str, bool]:
    return imports_matplotlib(lower_modules())


def test_every_lower_module_is_listed():
    names = lower_modules()
    assert {'elvis_nb.losses.infonce', 'elvis_nb.models.heads', 'elvis_nb.data.augment', 'elvis_nb.train'} <= set(names)


@pytest.mark.parametrize('name', lower_modules())
def test_lower_module_imports_no_matplotlib(name, loaded):
    assert not loaded[name], f"importing {name} loads matplotlib: move its plot functions to elvis_nb.viz or a chapter cell"


def test_the_check_sees_matplotlib():
    "The probe itself: elvis_nb.viz does import matplotlib, so the check can fail."
    assert imports_matplotlib(['elvis_nb.viz']) == {'elvis_nb.viz': True}
