"""Fuzzing sample()'s inputs (seeded, bounded): shapes, dtypes, ranges, NaN/inf, PIL modes, EXIF-rotated JPEGs,
1x1 and 1x2000 images, mask conventions. Every case ends in a result whose known pixels are the input's, bit for
bit, or in one of the documented exceptions (ValueError, FileNotFoundError: see docs/inputs.md); never a hang, a
crash inside torch or a silently wrong result."""
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pyinpaint.inpainter import Inpainter
from pyinpaint.io import InpaintWarning, read_image, read_mask

DOCUMENTED = (ValueError, FileNotFoundError)


@pytest.fixture(scope="module")
def inp(tiny_model_dir):
    return Inpainter.load(tiny_model_dir, "cpu")


def _check(inp, image, mask, **kw):
    """Run one case: a result with exact known pixels, or a documented exception (returned)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InpaintWarning)
        try:
            out = inp.sample(image, mask, n=1, **{"seed": 0, **kw})[0]
        except DOCUMENTED as e:
            assert "\n" not in str(e) and str(e), f"not a one-line error: {e!r}"
            return e
        expected = read_image(image)
        hole = read_mask(mask, kw.get("invert", False))
    got = np.asarray(out)
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert np.array_equal(got[~hole], expected[~hole]), "a known pixel changed"
    assert time.perf_counter() - t0 < 30
    return None


def _hole(rng, h, w):
    m = np.zeros((h, w), bool)
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    m[y0:y0 + max(1, h // 3), x0:x0 + max(1, w // 3)] = True
    if m.all():
        m[0, 0] = False
    return m


def test_fuzz_shapes(inp):
    rng = np.random.default_rng(0)
    shapes = [(1, 2), (2, 1), (1, 2000), (2000, 1), (3, 3), (64, 64), (7, 300)]
    shapes += [tuple(int(v) for v in rng.integers(1, 200, 2)) for _ in range(6)]
    for h, w in shapes:
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        err = _check(inp, img, _hole(rng, h, w))
        assert err is None, f"{h}x{w}: {err}"
    with pytest.raises(ValueError, match="covers every pixel"):
        inp.sample(np.zeros((1, 1, 3), np.uint8), np.ones((1, 1), bool), n=1)
    one = _check(inp, np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), bool))  # empty mask: the input back
    assert one is None


def test_fuzz_dtypes_and_ranges(inp):
    rng = np.random.default_rng(1)
    h, w = 30, 40
    base = rng.random((h, w, 3))
    hole = _hole(rng, h, w)
    ok = [(base * 255).astype(np.uint8), base.astype(np.float32), base, (base * 255).astype(np.int16),
          (base * 255).astype(np.uint16), torch.from_numpy(base).permute(2, 0, 1).float(),
          torch.from_numpy(base).permute(2, 0, 1).to(torch.bfloat16), torch.from_numpy(base).permute(2, 0, 1).half(),
          torch.from_numpy((base * 255).astype(np.uint8)).permute(2, 0, 1)[None],
          (base[:, :, 0] * 255).astype(np.uint8), np.concatenate([base, base[:, :, :1]], axis=2).astype(np.float32)]
    for image in ok:
        assert _check(inp, image, hole) is None, f"{type(image).__name__} {image.dtype} failed"
    bad = {"values must be in": [base * 2, base - 0.5, (base * 1000).astype(np.int32),
                                 torch.from_numpy(base * 3).permute(2, 0, 1)],
           "NaN or infinite": [np.where(base > 0.5, np.nan, base), np.where(base > 0.5, np.inf, base),
                               torch.full((3, h, w), float("nan"), dtype=torch.bfloat16)],
           "must be": [base.astype(bool), torch.zeros(3, h, w, dtype=torch.int64), np.zeros((h, w, 2)),
                       np.zeros((h, w, 3), np.complex64), torch.zeros(h, w, 3), np.zeros((2, h, w, 3)),
                       123],
           "several images need as many masks": [[[0.5]]]}  # a list is several images
    for words, images in bad.items():
        for image in images:
            err = _check(inp, image, hole)
            assert isinstance(err, ValueError) and (words in str(err) or "unsupported" in str(err)), repr(err)


def test_fuzz_mask_conventions(inp):
    rng = np.random.default_rng(2)
    h, w = 24, 36
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    hole = _hole(rng, h, w)
    ref = np.asarray(inp.sample(img, hole, n=1, seed=0)[0])
    same = [hole.astype(np.uint8), hole.astype(np.uint8) * 255, hole.astype(np.float32), hole * 0.3,
            torch.from_numpy(hole), torch.from_numpy(hole)[None], torch.from_numpy(hole)[None, None],
            hole[:, :, None].astype(np.int64), Image.fromarray(hole.astype(np.uint8) * 255),
            Image.fromarray(hole), hole.astype(np.float16), torch.from_numpy(hole).to(torch.bfloat16)]
    for m in same:
        assert np.array_equal(np.asarray(inp.sample(img, m, n=1, seed=0)[0]), ref), type(m).__name__
    inverted = [~hole, (~hole).astype(np.uint8) * 255, torch.from_numpy(~hole).float()]
    for m in inverted:
        assert np.array_equal(np.asarray(inp.sample(img, m, n=1, seed=0, invert=True)[0]), ref)
    for m, words in [(np.where(hole, np.nan, 0.0), "NaN"), (hole * -1.0, ">= 0"), (np.zeros((h, w, 3)), "H x W"),
                     (np.zeros((h + 1, w), bool), "sizes differ"), (np.zeros((h, w), np.complex64), "must be"),
                     (Image.fromarray(np.dstack([hole * 255, hole * 0, hole * 0]).astype(np.uint8)), "single-channel"),
                     (Image.new("CMYK", (w, h)), "single-channel")]:
        err = _check(inp, img, m)
        assert isinstance(err, ValueError) and words in str(err), (words, err)


def test_fuzz_pil_modes_and_files(inp, tmp_path):
    rng = np.random.default_rng(3)
    h, w = 20, 30
    rgb = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
    hole = _hole(rng, h, w)
    grey16 = Image.fromarray((rng.random((h, w)) * 65535).astype(np.uint16))
    modes = [rgb, rgb.convert("RGBA"), rgb.convert("L"), rgb.convert("P"), rgb.convert("CMYK"), rgb.convert("LA"),
             rgb.convert("1"), rgb.convert("F"), rgb.convert("I"), grey16, rgb.convert("YCbCr"), rgb.convert("HSV")]
    for im in modes:
        assert _check(inp, im, hole) is None, im.mode
        path = tmp_path / f"x.{'tiff' if im.mode in ('F', 'CMYK', 'YCbCr', 'HSV', 'I') else 'png'}"
        try:
            im.save(path)
        except (OSError, ValueError, KeyError):
            continue  # PIL cannot write this mode to that format: nothing to read back
        assert _check(inp, path, hole) is None, f"file of mode {im.mode}"
    exif = Image.Exif()
    exif[0x0112] = 8  # rotated 90 degrees counter-clockwise when displayed
    rgb.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    err = _check(inp, tmp_path / "rot.jpg", hole)  # the hole was drawn on the stored, not the displayed, photo
    assert isinstance(err, ValueError) and "EXIF orientation" in str(err)
    assert _check(inp, tmp_path / "rot.jpg", hole.T.copy()[::-1]) is None
    for name, data in {"empty.png": b"", "trunc.png": b"\x89PNG\r\n\x1a\n\0\0", "text.jpg": b"hello"}.items():
        (tmp_path / name).write_bytes(data)
        err = _check(inp, tmp_path / name, hole)
        assert isinstance(err, ValueError) and name in str(err)
    assert isinstance(_check(inp, tmp_path / "missing.png", hole), FileNotFoundError)
    assert isinstance(_check(inp, tmp_path, hole), ValueError)  # a folder


def test_fuzz_options(inp):
    img = np.zeros((16, 16, 3), np.uint8)
    hole = np.zeros((16, 16), bool)
    hole[4:8, 4:8] = True
    for kw, words in [({"seed": 2 ** 64}, r"2\*\*64"), ({"seed": -1}, r"2\*\*64"), ({"seed": 1.5}, "integer"),
                      ({"temperature": 1e-37}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                      ({"temperature": float("inf")}, "temperature"), ({"top_k": 0}, "top_k"),
                      ({"sampler": "fast"}, "sampler")]:
        with pytest.raises(ValueError, match=words):
            inp.sample(img, hole, n=1, **kw)
    for t in (1e-3, 1e3):  # the bounds compute safely: finite, valid codes
        res = inp.inpaint(img, hole, n=2, seed=0, temperature=t)
        k = inp.model.structure.cfg.num_embeddings
        assert res.codes.min() >= 0 and res.codes.max() < k and torch.isfinite(res.completed).all()
    assert _check(inp, img, hole, seed=2 ** 64 - 1) is None
