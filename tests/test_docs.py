"""The docs preview as a reader sees it, in headless Chromium; README.md as a code host renders it; no private notes."""
import json, re, shutil, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / 'tests' / '_artifacts'

# What a reader sees: the page's text outside code, after MathJax has typeset it.
CHECK_PAGE = '''() => {
  const body = document.querySelector('.elvis-page').cloneNode(true);
  body.querySelectorAll('pre, code, script, style, .MathJax_Preview').forEach(e => e.remove());
  const text = body.innerText;
  return {title: (document.querySelector('h1.title') || {innerText: ''}).innerText.trim(),
          raw_math: ['$$', '\\\\(', '\\\\['].filter(s => text.includes(s)),
          raw_inline: (text.match(/\\$[^$\\s][^$\\n]{0,80}\\$/g) || []).slice(0, 3),
          directive: text.includes('#|') || [...document.querySelectorAll('.jp-InputArea pre')].some(p => /^\\s*#\\|/m.test(p.innerText)),
          prompt: /In\\s*\\[/.test(document.body.innerText),
          untypeset: [...document.querySelectorAll('script[type^="math/tex"]')].filter(
              s => !(s.previousElementSibling && /MathJax/.test(s.previousElementSibling.className))).map(s => s.textContent.slice(0, 60)),
          tex: document.querySelectorAll('script[type^="math/tex"]').length,
          quarto_attrs: text.includes('{target='),
          broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))};
}'''
MATHJAX_DONE = 'body[data-mathjax="done"]'  # set by the page once MathJax has typeset everything


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    from elvis_nb.docs import build_preview
    out = tmp_path_factory.mktemp('site')
    t0 = time.time()
    pages = build_preview(out, run_dir=None)
    print(f'docs build: {time.time() - t0:.1f} s')
    return out, pages


def test_every_notebook_has_a_page(site):
    from elvis_nb.docs import book_notebooks, page_path
    out, pages = site
    assert sorted(pages) == sorted(page_path(n).as_posix() for n in book_notebooks(ROOT / 'nbs'))
    assert json.loads((out / 'pages.json').read_text()) == pages
    index = (out / 'index.html').read_text()
    assert all(f'href="{p}"' in index for p in pages), 'the sidebar must link every page'
    assert (out / 'mathjax' / 'MathJax.js').exists()
    for p in pages:
        assert not re.search(r'(src|href)="https?://cdn', (out / p).read_text()), f'{p} loads something from a CDN'


def test_pages_in_a_browser(site):
    "Every page: a title, math typeset by the local MathJax, no raw TeX, no `#|`, no prompts, every image loaded."
    if not shutil.which('chromium'):
        pytest.skip('no chromium on PATH (Debian: apt-get install -y chromium)')
    pw = pytest.importorskip('playwright.sync_api', reason='playwright is not installed')
    out, pages = site
    ARTIFACTS.mkdir(exist_ok=True)
    problems, n_math = {}, 0
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which('chromium'), args=['--no-sandbox', '--disable-gpu'])
        tab = browser.new_page(viewport={'width': 1300, 'height': 1000})
        tab.route(re.compile(r'^https?://'), lambda route: route.abort())  # offline, as a reader without a network
        for page in pages:
            tab.goto((out / page).as_uri())
            tab.wait_for_selector(MATHJAX_DONE, state='attached', timeout=60_000)
            r = tab.evaluate(CHECK_PAGE)
            bad = [k for k in ('raw_math', 'raw_inline', 'directive', 'prompt', 'quarto_attrs', 'broken_images', 'untypeset') if r[k]]
            if not r['title'] or r['title'] == 'untitled': bad.append('title')
            if bad: problems[page] = {k: r.get(k) for k in bad}
            n_math += r['tex']
            if page in ('index.html', 'losses.infonce.html'):
                tab.screenshot(path=str(ARTIFACTS / page.replace('.html', '.png')))
        browser.close()
    print(f'screenshots in {ARTIFACTS}')
    assert not problems, problems
    assert n_math > 100, f'only {n_math} formulas typeset in the whole book'


def test_math_renders_where_there_is_math(site):
    "A chapter with equations hands them to MathJax (checked in the browser above); here: its page points at the local copy."
    out, _ = site
    page = (out / 'losses.infonce.html').read_text()
    assert 'src="mathjax/MathJax.js?config=' in page and '$$' in page


def _readme_html():
    import mistune
    return mistune.html((ROOT / 'README.md').read_text())  # a code host renders Markdown; it runs no script


def test_readme_renders_cleanly():
    text, rendered = (ROOT / 'README.md').read_text(), _readme_html()
    for artefact in ('#|', '<style', 'import pandas', 'In [', 'dataframe'):
        assert artefact not in text, f'README.md shows {artefact!r}'
    assert 'readme_files/main_result.png' in rendered, 'the main result figure'
    assert all((ROOT / src).exists() for src in re.findall(r'<img src="([^"]+)"', rendered) if not src.startswith('http'))
    assert 'https://elvis-nb.github.io/elvis_nb/' in rendered, 'a link to the docs'
    assert rendered.count('<pre><code class="language-sh">python3.11 -m venv') == 2, 'the two commands'
    assert '<strong>Losses</strong>' in rendered and '<strong>Evaluation</strong>' in rendered, 'the chapter map'


def test_sidebar_is_generated():
    from elvis_nb.docs import sidebar_yml
    assert (ROOT / 'nbs' / 'sidebar.yml').read_text() == sidebar_yml(ROOT / 'nbs'), 'run elvis_nb.docs.write_sidebar()'


def test_no_reader_is_sent_to_private_notes():
    "No page or module cites the developers' private research notes (\"paper-notes §2.4\"): the references chapter does."
    import re
    cite = re.compile(r'paper-notes[\s,]*(§|\(|head)')
    hits = [str(p.relative_to(ROOT)) for p in [*(ROOT / 'nbs').rglob('*.ipynb'), *(ROOT / 'elvis_nb').rglob('*.py')]
            if cite.search(p.read_text()) and '.ipynb_checkpoints' not in p.parts]
    assert not hits, hits



def test_experiment_page_from_a_stored_run(tmp_path):
    "An experiment page shows the executed copy from a stored run (as `elvis-nb reproduce` leaves it), and says so."
    import base64, io, nbformat
    from PIL import Image
    from elvis_nb.docs import render_page, stored_run_notebook, run_profile, _run_note
    step = tmp_path / 'runs' / 'smoke' / 'seed0' / 'convirt' / 'pretrain'
    step.mkdir(parents=True)
    (step / 'step.json').write_text(json.dumps({'key': 'seed0/convirt/pretrain', 'params': {'profile': 'smoke'}}))
    png = io.BytesIO(); Image.new('L', (8, 8), 128).save(png, format='PNG')
    b64 = base64.b64encode(png.getvalue()).decode()
    cell = nbformat.v4.new_code_cell('#| echo: false\nfig = plot()', outputs=[nbformat.v4.new_output(
        'display_data', data={'image/png': b64, 'text/plain': 'fig'})])
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Pre-training experiment\n> Pre-train.'),
                                                   nbformat.v4.new_code_cell('x = 1'), cell]), step / 'pretrain.ipynb')
    nb = stored_run_notebook(tmp_path / 'runs' / 'smoke', 'pretrain')
    assert nb == step / 'pretrain.ipynb' and run_profile(step) == 'smoke'
    front = render_page(nb, tmp_path / 'site' / 'experiments' / 'pretrain.html', '../', note=_run_note(tmp_path / 'runs' / 'smoke', nb))
    page = (tmp_path / 'site' / 'experiments' / 'pretrain.html').read_text()
    assert front['title'] == 'Pre-training experiment'
    assert 'Outputs from a stored run' in page and 'profile <code>smoke</code>' in page
    assert f'data:image/png;base64,{b64}' in page, 'the stored figure is on the page'
    code = lambda name: f'<span class="n">{name}</span>'  # how the highlighted source shows a name
    assert code('plot') not in page and code('x') in page, 'echo: false hides the code, not the output'
    assert stored_run_notebook(tmp_path / 'runs' / 'smoke', 'eval_grounding') is None
    assert 'Not executed in this preview' in _run_note(tmp_path / 'runs' / 'smoke', None)


def test_index_chapter_map_is_current():
    "index.ipynb stores its chapter map as an output: it must list the notebooks as they are now (re-run index.ipynb if not)."
    import nbformat
    from elvis_nb.docs import chapter_map
    nb = nbformat.read(ROOT / 'nbs' / 'index.ipynb', as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == 'code' and 'chapter_map()' in c.source)
    assert ''.join(o.get('text', '') for o in cell.outputs).strip() == chapter_map(ROOT / 'nbs').strip()


@pytest.mark.slow
def test_quarto_site_builds(tmp_path):
    """Where Quarto is installed, `nbdev_docs` builds the published site from a copy of the repository.

    Quarto cannot be installed on the project's own machines (PyPI's `quarto-cli` is an sdist that downloads the binary
    from GitHub while it builds; npm's `quarto` is an unrelated package; Debian has none), so there it skips and the
    offline preview above is what is tested. Marked slow: Quarto renders every chapter (minutes on 2 cores)."""
    import subprocess, sys, os
    if shutil.which('quarto') is None:
        pytest.skip('no `quarto` on PATH: install it from https://quarto.org to build the published site (nbdev_docs)')
    repo = tmp_path / 'repo'
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns('.git', '_docs', '_proc', 'runs', '.venv', '__pycache__',
                                                              '_artifacts', '*.egg-info', '.ipynb_checkpoints'))
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'} | {'PYTHONPATH': str(repo)}
    r = subprocess.run([str(Path(sys.executable).parent / 'nbdev_docs')], cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    site = repo / '_docs'
    pages = {p.relative_to(site).as_posix() for p in site.rglob('*.html')}
    assert {'index.html', 'train.html', 'viz.html', 'references.html'} <= pages, sorted(pages)[:20]
    assert 'Training' in (site / 'train.html').read_text()
