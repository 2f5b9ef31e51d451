"""End to end, in a real headless browser: `pyinpaint serve` (the command, the shipped model) and its page, driven
by Playwright on the system's chromium (Debian's package; no browser is downloaded). Loads the page, opens a photo,
draws one stroke, presses Inpaint, waits for the fills, checks them pixel by pixel, and saves a screenshot
(``$PYINPAINT_TEST_ARTIFACTS/serve-browser.png``, else in pytest's temporary folder; its path is printed)."""
import io
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

N = 2


def chromium() -> str | None:
    for name in (os.environ.get("PYINPAINT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install '.[test]')")
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`pyinpaint serve` as a user starts it, on a free port; yields the address it prints. It runs outside the
    checkout (`python -m` puts its folder first on the path), so it imports the installed package."""
    pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install '.[serve]'")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pyinpaint", "serve", "--port", "0", "--device", "cpu"],
                            cwd=tmp_path_factory.mktemp("serve-cwd"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:  # the address line comes once the model is loaded and the port bound
            lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if m:
                break
        else:
            pytest.fail("pyinpaint serve exited without an address:\n" + "".join(lines))
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fetch(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as r:
        return np.array(Image.open(io.BytesIO(r.read())).convert("RGB"))


@pytest.mark.slow
def test_draw_a_stroke_and_get_fills(browser, server, tmp_path, record_property):
    photo = np.array(Image.fromarray(skdata.astronaut()[25:235, 120:330]).resize((192, 192), Image.BICUBIC))
    path = tmp_path / "face.png"
    Image.fromarray(photo).save(path)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        page.goto(server)
        page.wait_for_function("() => document.getElementById('model').options.length > 0")
        page.set_input_files("#photo-file", str(path))
        page.wait_for_selector("#mask:not([hidden])")
        page.fill("#n", str(N))
        page.fill("#seed", "3")
        box = page.locator("#mask").bounding_box()
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        page.mouse.move(x0 + 0.30 * w, y0 + 0.55 * h)
        page.mouse.down()
        for i in range(1, 11):  # one stroke across the mouth
            page.mouse.move(x0 + (0.30 + 0.04 * i) * w, y0 + (0.55 + 0.01 * i) * h)
        page.mouse.up()
        page.click("#inpaint")
        page.wait_for_function(
            f"() => [...document.querySelectorAll('#grid img.fill')].filter(i => i.complete && i.naturalWidth).length"
            f" === {N}", timeout=180_000)
        page.wait_for_function("() => document.querySelector('#grid img.original').naturalWidth > 0")
        assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
        # the hole the page sent: where its mask canvas is painted
        alpha = page.evaluate("""() => { const c = document.getElementById('mask');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const a = []; for (let i = 3; i < d.length; i += 4) a.push(d[i]); return a; }""")
        hole = np.array(alpha, np.uint8).reshape(photo.shape[:2]) > 0
        assert 300 < hole.sum() < 0.2 * hole.size, hole.sum()
        urls = page.eval_on_selector_all("#grid img.fill", "els => els.map(e => e.src)")
        original = fetch(page.eval_on_selector("#grid img.original", "e => e.src"))
        np.testing.assert_array_equal(original, photo)
        fills = [fetch(u) for u in urls]
        assert len(fills) == N
        for f in fills:
            np.testing.assert_array_equal(f[~hole], photo[~hole])  # outside the hole: the photo, bit for bit
            assert not np.array_equal(f[hole], photo[hole])  # inside: filled
        assert not np.array_equal(fills[0][hole], fills[1][hole]), "the fills do not differ inside the hole"
        # the large view opens on a click
        page.click("#grid img.fill >> nth=0")
        page.wait_for_selector("#viewer:not([hidden])")
        assert page.get_attribute("#download-one", "href") == urls[0].replace(server.rstrip("/"), "")
        page.click("#close")
        assert not errors, errors
    finally:
        out = Path(os.environ.get("PYINPAINT_TEST_ARTIFACTS") or tmp_path)
        out.mkdir(parents=True, exist_ok=True)
        shot = out / "serve-browser.png"
        page.screenshot(path=str(shot), full_page=True)
        record_property("screenshot", str(shot))
        print(f"screenshot: {shot}")
        page.close()


@pytest.mark.slow
def test_tools_and_errors_on_the_page(browser, server, tmp_path):
    """Drop a photo, paint, erase, undo, clear, load a mask file; errors of the server appear on the page."""
    photo = np.array(Image.fromarray(skdata.chelsea()).resize((150, 100)))
    mask = np.zeros((100, 150), np.uint8)
    mask[40:60, 50:90] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    holes = """() => { const c = document.getElementById('mask');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
    try:
        page.goto(server)
        page.wait_for_function("() => document.getElementById('model').options.length > 0")
        # drop the photo on the stage
        page.evaluate("""async (bytes) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], 'cat.png', {type: 'image/png'}));
            document.getElementById('stage').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }""", list(buf.getvalue()))
        page.wait_for_selector("#mask:not([hidden])")
        assert page.evaluate("() => [document.getElementById('mask').width, document.getElementById('mask').height]") \
            == [150, 100]
        page.click("#inpaint")  # nothing painted yet
        assert "mask is empty" in page.locator("#error").text_content()
        box = page.locator("#mask").bounding_box()

        def stroke(fx0, fx1, fy):
            page.mouse.move(box["x"] + fx0 * box["width"], box["y"] + fy * box["height"])
            page.mouse.down()
            page.mouse.move(box["x"] + fx1 * box["width"], box["y"] + fy * box["height"], steps=8)
            page.mouse.up()

        stroke(0.2, 0.8, 0.5)
        painted = page.evaluate(holes)
        assert painted > 200
        page.click("#eraser")
        stroke(0.1, 0.9, 0.5)
        assert page.evaluate(holes) < painted / 4
        page.click("#undo")
        assert page.evaluate(holes) == painted
        page.click("#clear")
        assert page.evaluate(holes) == 0
        page.click("#undo")
        assert page.evaluate(holes) == painted
        page.click("#clear")
        page.set_input_files("#mask-file", str(tmp_path / "mask.png"))
        page.wait_for_function(f"() => ({holes})() === {int((mask > 0).sum())}")
        # an option the model refuses: the job fails, the page says why, and the next request works
        page.fill("#top_k", "100000")
        page.fill("#n", "1")
        page.click("#inpaint")
        page.wait_for_selector("#error:not([hidden])")
        assert "top_k" in page.locator("#error").text_content()
        page.fill("#top_k", "")
        page.click("#inpaint")
        page.wait_for_function("() => document.querySelectorAll('#grid img.fill').length === 1", timeout=120_000)
        assert page.locator("#error").is_hidden()
    finally:
        page.close()
