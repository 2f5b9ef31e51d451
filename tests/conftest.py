import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

# The official parity fixtures live in ../shared/parity beside the project (developers' machines and CI);
# a user's fresh checkout has none, and the parity tests then skip. PYINPAINT_PARITY_DIR overrides.
PARITY_ROOT = Path(os.environ.get("PYINPAINT_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "parity"))


def parity_sets() -> list[Path]:
    if not PARITY_ROOT.is_dir():
        return []
    return sorted(p for p in PARITY_ROOT.iterdir() if (p / "io.npz").exists() and (p / "weights.npz").exists())


def pytest_generate_tests(metafunc):
    if "parity_dir" in metafunc.fixturenames:
        sets = parity_sets()
        if sets:
            metafunc.parametrize("parity_dir", sets, ids=[p.name for p in sets])
        else:
            metafunc.parametrize("parity_dir", [pytest.param(None, marks=pytest.mark.skip(
                reason=f"no official parity fixtures at {PARITY_ROOT} (set PYINPAINT_PARITY_DIR)"))])


def load_parity(parity_dir: Path):
    """(official flags, weights by TF name, io arrays) of one fixture set."""
    flags = json.loads((parity_dir / "config.json").read_text())["config"]
    weights = dict(np.load(parity_dir / "weights.npz", allow_pickle=False))
    io = dict(np.load(parity_dir / "io.npz", allow_pickle=False))
    return flags, weights, io


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|: the fixtures' error measure."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


# Shared by the stage 2 and 3 training tests: 8 real photo crops, and a tiny VQ-VAE trained 2 steps on them.
@pytest.fixture(scope="session")
def stage_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee()]
    for i in range(8):
        img = photos[i % 3]
        crop = Image.fromarray(img[10 * i:10 * i + 250, 12 * i:12 * i + 250]).resize((72, 72), Image.BILINEAR)
        crop.save(root / f"img{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_vq_run(stage_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vq"
    from pyinpaint.cli import main

    assert main(["train", "vqvae", "--data", str(stage_images), "--out", str(out), "--config", "tiny", "--steps", "2",
                 "--batch-size", "2", "--device", "cpu", "--quiet"]) == 0
    return out




# A tiny random model directory (all four networks), shared by the inference, CLI and evaluation tests.
def lively_generator():
    """A random texture generator whose output depends visibly on the structure map: the official initialisation
    (std 0.05) leaves activations near zero, so the weights are scaled up (as the parity fixtures do)."""
    from pyinpaint.config import texture_preset
    from pyinpaint.models.texture import TextureGenerator

    gen = TextureGenerator(texture_preset("tiny"))
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("weight"):
                p.mul_(2.5)
    return gen


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from pyinpaint.config import structure_preset, texture_preset, vqvae_preset
    from pyinpaint.modelfile import save_model
    from pyinpaint.models.structure import StructureGenerator
    from pyinpaint.models.texture import Discriminator
    from pyinpaint.models.vqvae import VQVAE

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inpainter") / "tiny"
    save_model(path, VQVAE(vqvae_preset("tiny")), StructureGenerator(structure_preset("tiny")), lively_generator(),
               Discriminator(texture_preset("tiny")), source={"test": True})
    return path


# Triton helpers shared by the kernel tests.
def skip_unless_triton(*tensors):
    from pyinpaint.kernels import _triton

    why = _triton.triton_unavailable_reason(*tensors)
    if why is not None:
        pytest.skip(f"Triton kernel cannot run here: {why}")


def run_compile_script(script: str, tmp_path: Path) -> None:
    """Run a kernel-compilation script (for a GPU target, no GPU needed) in a fresh interpreter without
    TRITON_INTERPRET; exit status 3 = skip (its stdout says why), anything but a final "ok" fails."""
    import subprocess
    import sys

    from pyinpaint.kernels import _triton

    if not _triton.HAS_TRITON:
        pytest.skip("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    path = tmp_path / "compile_sm90.py"  # triton.jit needs its source in a file
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]
