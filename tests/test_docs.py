"""The docs preview builds one page per notebook, with rendered math and embedded figures."""
import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def test_docs_preview(tmp_path, monkeypatch):
    from elvis_nb.docs import build_preview
    monkeypatch.chdir(ROOT)
    pages = build_preview(tmp_path / 'site')
    notebooks = sorted(p.relative_to(ROOT / 'nbs') for p in (ROOT / 'nbs').rglob('*.ipynb')
                       if not any(part.startswith(('_', '.')) for part in p.relative_to(ROOT / 'nbs').parts))
    assert sorted(pages) == sorted(str(n.with_suffix('.html')) for n in notebooks)
    for nb_rel in notebooks:
        page = (tmp_path / 'site' / nb_rel.with_suffix('.html')).read_text()
        assert 'Preview built with nbconvert' in page, nb_rel
        nb = nbformat.read(ROOT / 'nbs' / nb_rel, as_version=4)
        if any('$' in c.source for c in nb.cells if c.cell_type == 'markdown'):
            assert 'MathJax' in page, f'{nb_rel}: math present but no MathJax in its page'
        if any(o.get('data', {}).get('image/png') for c in nb.cells if c.cell_type == 'code' for o in c.outputs):
            assert 'data:image/png;base64' in page, f'{nb_rel}: figure missing from its page'
    index = (tmp_path / 'site' / 'index.html').read_text()
    assert all(p in index for p in pages if p != 'index.html')
    assert json.loads((tmp_path / 'site' / 'pages.json').read_text()) == pages
