"""A real browser drives an explorer: JupyterLab on 127.0.0.1, headless Chromium through Playwright, a slider moved,
the picture changed. Skips (with the reason) when chromium or playwright is missing."""
import json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JUPYTER = Path(sys.executable).with_name('jupyter')
CELL = "from elvis_nb.explore import TargetsExplorer\nex = TargetsExplorer(['elvis'], profile='smoke', n_studies=2)\nex"


def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try: urllib.request.urlopen(url, timeout=2); return
        except OSError: time.sleep(0.5)
    raise TimeoutError(f'JupyterLab did not answer at {url} within {timeout} s')


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free local port, serving a notebook that shows a TargetsExplorer."
    if not shutil.which('chromium'): pytest.skip('no chromium on PATH (apt-get install -y chromium)')
    pytest.importorskip('playwright.sync_api', reason='playwright is not installed (pip install playwright)')
    if not JUPYTER.exists(): pytest.skip(f'no jupyter next to {sys.executable}')
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'explorer', 'metadata': {}, 'outputs': [], 'source': CELL}],
          'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    (tmp_path / 'explore.ipynb').write_text(json.dumps(nb))
    port = _free_port()
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1',
           'JUPYTER_RUNTIME_DIR': str(tmp_path / 'runtime'), 'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path / 'ws')}
    proc = subprocess.Popen([str(JUPYTER), 'lab', '--allow-root', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
                             "--ServerApp.token=", "--ServerApp.password=", f'--ServerApp.root_dir={tmp_path}'],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f'http://127.0.0.1:{port}/lab', 60)
        yield f'http://127.0.0.1:{port}', tmp_path
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()


def test_slider_redraws_the_picture(lab):
    from playwright.sync_api import sync_playwright
    url, folder = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which('chromium'), args=['--no-sandbox', '--disable-gpu'])
        page = browser.new_page(viewport={'width': 1300, 'height': 1000})
        page.goto(f'{url}/lab/tree/explore.ipynb')
        try: page.locator('.jp-Dialog .jp-mod-accept').click(timeout=20_000)      # "Select Kernel": the default
        except Exception: pass                                                     # no dialog: the kernel was chosen
        page.locator('.jp-Cell .jp-InputArea-editor').first.click()
        page.keyboard.press('Shift+Enter')
        picture = page.locator('.jp-OutputArea img').first
        picture.wait_for(timeout=120_000)                                          # kernel start + model + first figure
        page.wait_for_function("() => { const i = document.querySelector('.jp-OutputArea img'); return i && i.naturalWidth > 100; }",
                               timeout=60_000)
        before_src, before_tau = picture.get_attribute('src'), page.locator('.widget-readout').first.inner_text()
        page.screenshot(path=str(folder / 'before.png'))
        handle = page.locator('.noUi-handle').first                                # the τ_tgt slider
        box = handle.bounding_box()
        page.mouse.move(box['x'] + box['width'] / 2, box['y'] + box['height'] / 2)
        page.mouse.down(); page.mouse.move(box['x'] + 80, box['y'] + box['height'] / 2, steps=5); page.mouse.up()
        page.wait_for_function("(old) => document.querySelector('.jp-OutputArea img').getAttribute('src') !== old",
                               arg=before_src, timeout=30_000)
        after_tau = page.locator('.widget-readout').first.inner_text()
        page.screenshot(path=str(folder / 'after.png'))
        output = page.locator('.jp-OutputArea').first.inner_text()
        browser.close()
    if os.environ.get('EXPLORERS_SCREENSHOTS'):                                   # keep the pictures to look at them
        for f in ('before.png', 'after.png'): shutil.copy(folder / f, Path(os.environ['EXPLORERS_SCREENSHOTS']) / f)
    assert after_tau != before_tau, (before_tau, after_tau)                       # the slider moved …
    assert 'Traceback' not in output and 'Error' not in output, output           # … and the picture redrew, no error
