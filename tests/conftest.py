import os
from pathlib import Path

import pytest

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
