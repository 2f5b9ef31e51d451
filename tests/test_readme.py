"""Every example in README.md runs as written (on the shipped model, in a scratch folder holding the photo.jpg,
mask.png, photos/ and masks/ the examples name), so the README and the package cannot drift apart.

Skipped, each for the reason in SKIPS: installing (CI's install step does that, and it needs the network), running
the test suite itself, examples that need the ../shared data sets or the authors' TensorFlow checkpoint, and
training (hours; the training commands have their own tests with the tiny preset)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

README = Path(__file__).resolve().parents[1] / "README.md"

# substring of a block -> why it does not run here
SKIPS = {
    "pip install": "installs the package (CI's install step runs it)",
    "pytest": "runs the test suite itself",
    "../shared": "needs the ../shared data sets",
    "convert-official": "needs the authors' TensorFlow checkpoint",
    "train ": "trains (hours); the training commands have their own tests",
    "runs/": "needs training runs",
}


def blocks() -> list[tuple[str, str, int]]:
    """(language, code, line number) of each fenced bash / python block of the README."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.M | re.S):
        out.append((m.group(1), m.group(2), text[:m.start()].count("\n") + 1))
    return out


def _skip_reason(code: str) -> str | None:
    return next((why for key, why in SKIPS.items() if key in code), None)


def _params():
    return [pytest.param(lang, code, id=f"{lang}-line{line}",
                         marks=[pytest.mark.skip(reason=_skip_reason(code))] if _skip_reason(code) else [])
            for lang, code, line in blocks()]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """The files the examples name: a face photo (JPEG), its mask (PNG), and photos/ + masks/ paired by name."""
    root = tmp_path_factory.mktemp("readme")
    face = skdata.astronaut()[20:220, 130:330]
    Image.fromarray(face).save(root / "photo.jpg", quality=95)
    hole = np.zeros(face.shape[:2], np.uint8)
    hole[80:140, 60:140] = 255
    Image.fromarray(hole).save(root / "mask.png")
    (root / "photos").mkdir()
    (root / "masks").mkdir()
    for name, (top, left) in {"a": (0, 0), "b": (30, 40)}.items():
        Image.fromarray(np.ascontiguousarray(face[top:top + 120, left:left + 150])).save(root / "photos" / f"{name}.jpg")
        m = np.zeros((120, 150), np.uint8)
        m[40:80, 50:100] = 255
        Image.fromarray(m).save(root / "masks" / f"{name}.png")
    return root


def test_the_readme_has_runnable_examples():
    runnable = [code for _, code, _ in blocks() if not _skip_reason(code)]
    assert sum("pyinpaint sample" in c for c in runnable) >= 2 and any("Inpainter.load" in c for c in runnable)


@pytest.mark.slow
@pytest.mark.parametrize("lang, code", _params())
def test_readme_example(lang, code, scratch, monkeypatch):
    monkeypatch.chdir(scratch)
    if lang == "python":
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
        return
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run(["bash", "-e", "-c", code], cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"README example failed:\n{code}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
