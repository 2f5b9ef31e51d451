"""Seeded, bounded fuzzing of the model files users hand us: corrupted model directories (truncated or bit-flipped
safetensors, edited config.json values and types, missing files) and corrupted TensorFlow checkpoints (files,
the checkpoint state file, the index's entries behind valid checksums, the variables' shapes, dtypes and values).

Every case must end in a loaded model whose weights are exactly the original ones, or in one of the documented
exceptions (docs/design.md, "Model files"); never a hang (each case runs under an alarm), a crash in torch or
numpy, or a silent load of other weights."""
import json
import random
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import tfwriter as tfw
from test_modelfile import _official_arrays, _official_state, tiny_modules
from tfwriter import write_checkpoint

from pyinpaint import tfcheckpoint as tfc
from pyinpaint.modelfile import ModelFileError, load_model, save_model
from pyinpaint.official import convert_official
from pyinpaint.tfcheckpoint import CheckpointError

MODEL_ERRORS = (FileNotFoundError, ModelFileError)
# reading a checkpoint: a corrupt file, a missing file, a feature the reader does not implement
CHECKPOINT_ERRORS = (CheckpointError, FileNotFoundError, NotImplementedError)
# converting one: also ValueError for variables that are not a DSI model (and ModelFileError, a ValueError)
CONVERT_ERRORS = CHECKPOINT_ERRORS + (ValueError,)


@contextmanager
def deadline(seconds: int, what: str):
    def fail(*_):
        raise TimeoutError(f"{what} ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _state(model) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, m in (("vqvae", model.vqvae), ("structure", model.structure),
                                            ("texture", model.generator), ("discriminator", model.discriminator))
            if m is not None for k, v in m.state_dict().items()}


def seeds(n: int, fast: int = 1):
    """``n`` seeds, the first ``fast`` in every run, the rest marked slow (CI runs them too)."""
    return [pytest.param(s, marks=() if s < fast else pytest.mark.slow) for s in range(n)]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- model folders
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "tiny"
    save_model(path, *tiny_modules(seed=7), source={"test": "fuzz"})
    return path


_VALUES = [0, -1, 1, 3, 7, 8, 9, 2 ** 31, 2 ** 64, 10 ** 30, 0.5, 1.5, -0.0, 1e-300, 1e308, "64", "", None, True, False,
           [], {}, [64], {"a": 1}]


def _edit_config(d: Path, rng: random.Random) -> str:
    config = json.loads((d / "config.json").read_text())
    kind = rng.randrange(6)
    if kind == 0:  # a value of a section
        section = rng.choice(["vqvae", "structure", "texture"])
        key = rng.choice(sorted(config[section]))
        old = config[section][key]
        value = rng.choice(_VALUES + ([old * 2, old + 8, -old] if isinstance(old, (int, float)) else []))
        config[section][key] = value
        what = f"{section}.{key} = {value!r}"
    elif kind == 1:  # a top-level value
        key = rng.choice(["format", "version", "vqvae", "structure", "texture"])
        config[key] = value = rng.choice(_VALUES)
        what = f"{key} = {value!r}"
    elif kind == 2:  # a key removed
        section = rng.choice(["vqvae", "structure", "texture", None])
        target = config if section is None else config[section]
        key = rng.choice(sorted(target))
        del target[key]
        what = f"del {section}.{key}"
    elif kind == 3:  # a key added
        section = rng.choice(["vqvae", "structure", "texture", None])
        (config if section is None else config[section])["extra"] = 1
        what = f"{section}.extra added"
    else:  # the text damaged
        text = bytearray(json.dumps(config).encode())
        if kind == 4:
            text = text[:rng.randrange(len(text))]
            what = f"config.json cut at {len(text)}"
        else:
            pos = rng.randrange(len(text))
            text[pos] ^= 1 << rng.randrange(8)
            what = f"config.json bit flip at {pos}"
        (d / "config.json").write_bytes(bytes(text))
        return what
    (d / "config.json").write_text(json.dumps(config))
    return what


def _damage_weights(d: Path, rng: random.Random) -> str:
    path = d / "model.safetensors"
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    kind = rng.randrange(4)
    if kind == 0:
        cut = rng.randrange(len(raw))
        path.write_bytes(bytes(raw[:cut]))
        return f"weights cut at {cut} of {len(raw)}"
    # bit flips in the header (names, dtypes, shapes, offsets, checksum) or in the tensor data
    lo, hi = (0, header) if kind == 1 else (header, len(raw)) if kind == 2 else (0, len(raw))
    flips = [(rng.randrange(lo, hi), rng.randrange(8)) for _ in range(rng.randint(1, 4))]
    for pos, bit in flips:
        raw[pos] ^= 1 << bit
    path.write_bytes(bytes(raw))
    return f"weight bits flipped at {flips}"


def _damage_files(d: Path, rng: random.Random) -> str:
    name = rng.choice(["config.json", "model.safetensors", "README.md"])
    kind = rng.randrange(3)
    (d / name).unlink()
    if kind == 1:
        (d / name).mkdir()
    elif kind == 2:
        (d / name).write_bytes(b"")
    return f"{name}: {['removed', 'a directory', 'empty'][kind]}"


@pytest.mark.parametrize("seed", seeds(4))
def test_fuzz_model_directories(model_dir, tmp_path, seed):
    rng = random.Random(seed)
    original = _state(load_model(model_dir))
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(25):
        d = tmp_path / f"case{i}"
        shutil.copytree(model_dir, d)
        what = rng.choice([_edit_config, _damage_weights, _damage_files])(d, rng)
        with deadline(20, what):
            try:
                model = load_model(d)
            except MODEL_ERRORS as e:
                assert str(e) and "\n" not in str(e), (what, e)
                outcomes["refused"] += 1
                continue
            except Exception as e:  # noqa: BLE001 - anything else is the bug this test looks for
                pytest.fail(f"{what}: {type(e).__name__}: {e}")
        assert _same_weights(_state(model), original), f"{what}: loaded other weights"
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 8, outcomes


# ---------------------------------------------------------------------------------- TensorFlow checkpoints
@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    mods = tiny_modules(seed=8)
    arrays = _official_arrays(*mods)
    prefix = write_checkpoint(tmp_path_factory.mktemp("tf") / "model.ckpt", arrays, write_state=True)
    return prefix, arrays, mods


def _files(prefix: Path) -> dict[str, Path]:
    return {"index": Path(str(prefix) + ".index"), "data": Path(str(prefix) + ".data-00000-of-00001"),
            "state": prefix.parent / "checkpoint"}


def _damage_checkpoint(prefix: Path, rng: random.Random) -> str:
    files = _files(prefix)
    which = rng.choice(["index", "data", "state"])
    path = files[which]
    raw = bytearray(path.read_bytes())
    kind = rng.randrange(4 if which == "state" else 3)
    if kind == 0:
        cut = rng.randrange(len(raw))
        path.write_bytes(bytes(raw[:cut]))
        return f"{which} cut at {cut}"
    if kind == 1:
        flips = [(rng.randrange(len(raw)), rng.randrange(8)) for _ in range(rng.randint(1, 3))]
        for pos, bit in flips:
            raw[pos] ^= 1 << bit
        path.write_bytes(bytes(raw))
        return f"{which} bits flipped at {flips}"
    if kind == 2:
        path.unlink()
        return f"{which} removed"
    names = [b"\\377\\376", b"\\xff", b"a" * 5000, b"x/" * 3000, b"\\0", b"\\q\\", b"/" + b"d" * 300 + b"/m",
             b"model.ckpt\\000x", "\u00e9t\u00e9".encode(), b"\xff\xfe", b""]
    name = rng.choice(names)
    path.write_bytes(b'model_checkpoint_path: "' + name + b'"\n')
    return f"state names {name[:40]!r}"


def _convert_or_refuse(source, out: Path, what: str, arrays, mods):
    with deadline(30, what):
        try:
            out = convert_official(source, out, {"image_size": 64})
        except CONVERT_ERRORS as e:
            assert str(e), what
            return "refused"
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{what}: {type(e).__name__}: {e}")
        model = load_model(out)
    for ours, theirs in zip((model.vqvae, model.structure, model.generator, model.discriminator), mods):
        if ours is None:  # the discriminator may be left out only when its variables are all gone
            assert not any(k.startswith("texture_discriminator/") for k in arrays), what
            continue
        a, b = _official_state(ours), _official_state(theirs)
        assert all(torch.equal(a[k], b[k]) for k in b), f"{what}: converted other weights"
    return "converted"


@pytest.mark.parametrize("seed", seeds(3))
def test_fuzz_checkpoint_files(official_ckpt, tmp_path, seed):
    prefix, arrays, mods = official_ckpt
    rng = random.Random(100 + seed)
    refused = 0
    for i in range(12):
        d = tmp_path / f"case{i}"
        shutil.copytree(prefix.parent, d)
        what = _damage_checkpoint(d / prefix.name, rng)
        refused += _convert_or_refuse(d, tmp_path / f"out{i}", what, arrays, mods) == "refused"
    assert refused > 4


def _mutate_entry(value: bytes, rng: random.Random) -> bytes:
    v = bytearray(value)
    kind = rng.randrange(4)
    if kind == 0 and v:
        for _ in range(rng.randint(1, 3)):
            v[rng.randrange(len(v))] ^= 1 << rng.randrange(8)
    elif kind == 1 and v:
        del v[rng.randrange(len(v)):]
    elif kind == 2:
        pos = rng.randrange(len(v) + 1)
        v[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    else:  # a field appended: a huge varint, another wire type, a shape, a dtype, a shard, an offset
        field = rng.choice([1, 2, 3, 4, 5, 6, 7, 9])
        big = rng.choice([0, 1, 7, 14, 20, 21, 99, 101, 2 ** 40, 2 ** 63, 2 ** 64 - 1])
        v += rng.choice([tfw._pb_varint(field, big),
                         tfw._pb_bytes(field, tfw._pb_bytes(2, tfw._pb_varint(1, rng.choice([0, 3, 2 ** 40])))),
                         tfw._pb_fixed32(field, rng.randrange(2 ** 32)), bytes([field << 3 | 3])])
    return bytes(v)


@pytest.mark.parametrize("seed", seeds(3))
def test_fuzz_index_entries_behind_valid_checksums(official_ckpt, tmp_path, seed):
    """Damage the index's protobuf entries and rebuild the SSTable with valid checksums, so that the parser (not the
    checksum) meets the damage; read with and without verifying the data."""
    prefix, _, _ = official_ckpt
    items = tfc._read_table(_files(prefix)["index"])
    rng = random.Random(200 + seed)
    refused = 0
    for i in range(50):
        d = tmp_path / f"case{i}"
        shutil.copytree(prefix.parent, d)
        j = rng.randrange(len(items))
        mutated = list(items)
        mutated[j] = (items[j][0], _mutate_entry(items[j][1], rng))
        if rng.random() < 0.2:  # the key too
            mutated[j] = (bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, 8))), mutated[j][1])
            mutated.sort()
        what = f"entry {items[j][0]!r} -> {mutated[j]!r}"
        try:
            table = tfw._build_table(mutated, block_size=4096, restart_interval=16)
        except ValueError:  # the mutated key collides with another: not a table
            continue
        _files(d / prefix.name)["index"].write_bytes(table)
        with deadline(20, what):
            try:
                names = list(tfc.list_variables(d))
                tfc.read_checkpoint(d, verify=rng.random() < 0.5)
            except CHECKPOINT_ERRORS as e:
                assert str(e), what
                refused += 1
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"{what}: {type(e).__name__}: {e}")
            else:
                assert names
    assert refused > 10


_MUTATIONS = {
    "dropped": lambda a, rng: None,
    "int32": lambda a, rng: a.astype(np.int32),
    "bool": lambda a, rng: a > 0,
    "strings": lambda a, rng: np.full(a.shape, b"x", dtype=object),
    "nan": lambda a, rng: np.where(np.arange(a.size).reshape(a.shape) == rng.randrange(a.size), np.nan, a),
    "inf": lambda a, rng: np.full_like(a, np.inf),
    "overflow": lambda a, rng: a.astype(np.float64) * 1e300 + 1e300,
    "extra dim": lambda a, rng: a[None],
    "flattened": lambda a, rng: a.reshape(-1) if a.ndim > 1 else a.reshape(1, -1),
    "transposed": lambda a, rng: a.T.copy() if a.ndim > 1 and a.shape != a.T.shape else a[..., :0],
    "shrunk": lambda a, rng: a[..., : max(0, a.shape[-1] - 1)] if a.ndim else a[None],
    "grown": lambda a, rng: np.concatenate([a, a], axis=-1) if a.ndim else a[None],
}


@pytest.mark.parametrize("seed", seeds(4))
def test_fuzz_official_variables(official_ckpt, tmp_path, seed):
    """Checkpoints that are valid files but whose variables are wrong: names, shapes, dtypes, values."""
    _, arrays, mods = official_ckpt
    rng = random.Random(300 + seed)
    names = sorted(arrays)
    for i, kind in enumerate(rng.sample(sorted(_MUTATIONS), 6)):
        mutate, name = _MUTATIONS[kind], rng.choice(names)
        changed = dict(arrays)
        new = mutate(np.asarray(arrays[name]), rng)
        if new is None:
            del changed[name]
        else:
            changed[name] = new
        prefix = write_checkpoint(tmp_path / f"c{i}" / "model.ckpt", changed)
        what = f"{name}: {kind}"
        outcome = _convert_or_refuse(prefix, tmp_path / f"out{i}", what, changed, mods)
        assert outcome == "refused", what
