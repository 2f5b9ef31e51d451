"""TensorFlow V2 checkpoint reader (pyinpaint.tfcheckpoint) and the tests' writer (tests/tfwriter.py): no
TensorFlow, no fixture needed except for the real-checkpoint tests, which skip when the official parity fixtures
are absent."""
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tfwriter as tfw
from tfwriter import write_checkpoint

from pyinpaint import tfcheckpoint as tfc
from pyinpaint.tfcheckpoint import CheckpointError, list_variables, read_checkpoint, resolve_prefix

DATA = ".data-00000-of-00001"


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a/conv/kernel": rng.standard_normal((3, 3, 4, 8)).astype(np.float32),
        "a/conv/bias": rng.standard_normal(8).astype(np.float32),
        "b/dense/w": rng.standard_normal((5, 7)),                                   # float64
        "global_step": np.array(12345, dtype=np.int64),                            # scalar
        "counts": rng.integers(-2**31, 2**31 - 1, (4, 3), dtype=np.int32),
        "flags": rng.random((2, 3, 2)) > 0.5,
        "half/x": rng.standard_normal((6, 1)).astype(np.float16),
        "scalar_f32": np.array(-0.0, dtype=np.float32),
        "empty/lead": np.zeros((0, 3), np.float32),
        "empty/mid": np.zeros((2, 0, 4), np.int64),
        "bytes_u8": rng.integers(0, 256, 17, dtype=np.uint8),
        "small/int8": np.array([-128, 0, 127], np.int8),
        "small/int16": np.array([[-32768], [32767]], np.int16),
        "unsigned/u16": np.array([0, 65535], np.uint16),
        "unsigned/u32": np.array([0, 2**32 - 1], np.uint32),
        "unsigned/u64": np.array([0, 2**64 - 1], np.uint64),
        "complex": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "big": rng.standard_normal((64, 64, 4)).astype(np.float32),                 # > 1 KiB: vectorised CRC
        "nested/deep/name/with/slashes_0": np.arange(10, dtype=np.float32),
    }


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


# ------------------------------------------------------------------------------------------------ CRC-32C

def test_crc32c_known_values():
    assert tfc.crc32c(b"") == 0
    assert tfc.crc32c(b"123456789") == 0xE3069283
    # RFC 3720 (iSCSI) test vectors
    assert tfc.crc32c(bytes(32)) == 0x8A9136AA
    assert tfc.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tfc.crc32c(bytes(range(32))) == 0x46DD794E
    assert tfc.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_crc32c_vectorised_path_matches_bytewise():
    rng = np.random.default_rng(1)
    for n in (1024, 1025, 3000, 4099, 70001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        ref = ~tfc._crc_update_py(0xFFFFFFFF, data) & 0xFFFFFFFF
        assert tfc.crc32c(data) == ref, n
        assert tfc.crc32c(np.frombuffer(data, np.uint8)) == ref, n
        assert tfc.crc32c(data[n // 3:], tfc.crc32c(data[:n // 3])) == ref, n        # extend
    big = rng.integers(0, 256, tfc._CHUNK + 12345, dtype=np.uint8)                   # more than one chunk
    k = 777
    assert tfc.crc32c(big) == tfc.crc32c(big[k:], tfc.crc32c(big[:k]))


def test_mask_roundtrip():
    for c in (0, 1, 0xE3069283, 0xFFFFFFFF, 0x12345678):
        assert tfc._unmask(tfc._mask(c)) == c


# ------------------------------------------------------------------------------------------------ round trip

def test_round_trip_all_dtypes(tmp_path):
    arrays = _arrays()
    prefix = write_checkpoint(tmp_path / "model.ckpt", arrays)
    assert (tmp_path / "model.ckpt.index").is_file() and (tmp_path / f"model.ckpt{DATA}").is_file()
    out = read_checkpoint(prefix)
    assert list(out) == sorted(arrays)
    for k, v in arrays.items():
        assert _same(out[k], v), k
        assert out[k].flags.writeable
    meta = list_variables(prefix)
    assert meta == {k: (v.shape, v.dtype) for k, v in sorted(arrays.items())}


def test_round_trip_converts_layout_and_byte_order(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {"transposed": base.T, "strided": base[:, ::2], "big_endian": base.astype(">f4"),
              "big_i64": np.arange(5, dtype=">i8")}
    out = read_checkpoint(write_checkpoint(tmp_path / "m", arrays))
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype.newbyteorder("=") and out[k].dtype.isnative
        assert np.array_equal(out[k], v), k


def test_strings(tmp_path):
    arrays = {"s/scalar": np.array(b"hello"), "s/vec": np.array(["a", "", "\u00e9t\u00e9", "x" * 300]),
              "s/obj": np.array([[b"\x00\xff", b"z"]], dtype=object)}
    out = read_checkpoint(write_checkpoint(tmp_path / "m", arrays))
    assert out["s/scalar"].shape == () and out["s/scalar"][()] == b"hello"
    assert out["s/vec"].tolist() == [b"a", b"", "\u00e9t\u00e9".encode(), b"x" * 300]
    assert out["s/obj"].shape == (1, 2) and out["s/obj"].tolist() == [[b"\x00\xff", b"z"]]
    assert list_variables(tmp_path / "m")["s/vec"] == ((4,), np.dtype(object))


def test_many_keys_span_blocks_and_restarts(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {f"net/layer_{i:03d}/{'kernel' if i % 2 else 'bias'}": rng.standard_normal(i % 5 + 1).astype(np.float32)
              for i in range(300)}
    arrays.update({f"z{'/sub' * (i % 4)}/v{i}": np.float32(i) for i in range(40)})
    for kwargs in ({"block_size": 512}, {"block_size": 300, "restart_interval": 3}, {}):
        prefix = write_checkpoint(tmp_path / "many.ckpt", arrays, **kwargs)
        index = (tmp_path / "many.ckpt.index").read_bytes()
        footer = index[-48:]
        _, p = tfc._varint(footer, 0, "")
        _, p = tfc._varint(footer, p, "")
        off, p = tfc._varint(footer, p, "")
        size, _ = tfc._varint(footer, p, "")
        n_blocks = len(tfc._block_entries(index[off:off + size], "index"))
        assert n_blocks > (5 if kwargs else 0), kwargs
        out = read_checkpoint(prefix)
        assert list(out) == sorted(arrays)
        assert all(_same(out[k], np.asarray(v)) for k, v in arrays.items())
        sub = read_checkpoint(prefix, names=["z/v4", "net/layer_007/kernel"])
        assert list(sub) == ["z/v4", "net/layer_007/kernel"]


def test_snappy_compressed_index_blocks(tmp_path):
    arrays = {f"w{i}": np.full(3, i, np.int32) for i in range(50)}
    prefix = write_checkpoint(tmp_path / "s", arrays, block_size=200, _snappy=True)
    assert (tmp_path / "s.index").read_bytes()[-48:][-8:] == struct.pack("<Q", 0xDB4775248B80FB57)
    out = read_checkpoint(prefix)
    assert all(_same(out[k], v) for k, v in arrays.items())


def test_snappy_decoder():
    d = tfc._snappy_decompress
    assert d(b"\x0b" + b"\x08abc" + b"\x11\x03", "t") == b"abcabcabcab"          # overlapping 1-byte-offset copy
    lit = bytes(range(100))
    enc = (b"\xc8\x01" + bytes([60 << 2, 99]) + lit + bytes([(64 - 1) << 2 | 2]) + (100).to_bytes(2, "little")
           + bytes([(36 - 1) << 2 | 2]) + (100).to_bytes(2, "little"))
    assert d(enc, "t") == lit * 2                                                    # long literal, 2-byte copies
    enc4 = bytes([8]) + b"\x08xyz" + bytes([(5 - 1) << 2 | 3]) + (1).to_bytes(4, "little")
    assert d(enc4, "t") == b"xyzzzzzz"                                               # 4-byte offset, run
    assert d(tfw._snappy_literal(lit * 700), "t") == lit * 700
    with pytest.raises(CheckpointError, match="offset"):
        d(b"\x05\x11\x03", "t")                                                      # copy before any output
    with pytest.raises(CheckpointError, match="header says"):
        d(b"\x09\x08abc", "t")


# ------------------------------------------------------------------------------------------------ prefixes

def test_resolve_prefix_variants(tmp_path):
    prefix = write_checkpoint(tmp_path / "run" / "model.ckpt-100", {"x": np.ones(2, np.float32)})
    d = tmp_path / "run"
    assert resolve_prefix(prefix) == prefix
    assert resolve_prefix(str(prefix) + ".index") == prefix
    assert resolve_prefix(str(prefix) + DATA) == prefix
    (d / "model.ckpt-100.meta").write_bytes(b"graph")
    assert resolve_prefix(str(prefix) + ".meta") == prefix
    assert resolve_prefix(d) == prefix                                 # no state file, a single .index
    (d / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-100"\n'
                                  'all_model_checkpoint_paths: "model.ckpt-50"\nall_model_checkpoint_paths: "model.ckpt-100"\n')
    assert resolve_prefix(d) == prefix
    assert _same(read_checkpoint(d)["x"], np.ones(2, np.float32))
    (d / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\n')          # absolute path
    assert resolve_prefix(d) == prefix
    (d / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/train/model.ckpt-100"\n')   # moved
    assert resolve_prefix(d) == prefix
    (d / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-200"\n')
    with pytest.raises(FileNotFoundError, match="model.ckpt-200.index"):
        resolve_prefix(d)
    with pytest.raises(FileNotFoundError, match="nothere.index"):
        resolve_prefix(d / "nothere")
    write_checkpoint(d / "other.ckpt", {"y": np.zeros(1)}, write_state=True)
    assert resolve_prefix(d) == d / "other.ckpt"
    (d / "checkpoint").unlink()
    with pytest.raises(FileNotFoundError, match="2 '.index' files"):
        resolve_prefix(d)


@pytest.mark.parametrize("content,match", [
    (b'model_checkpoint_path: "' + b"x" * 5000 + b'"\n', "cannot use path"),                # name too long
    (b'model_checkpoint_path: "' + b"d/" * 3000 + b'm"\n', "cannot use path"),              # path too long
    (b'model_checkpoint_path: "\\377\\376"\n', "not a valid UTF-8 path"),                 # octal escapes, not UTF-8
    (b'model_checkpoint_path: "\\xff"\n', "not a valid UTF-8 path"),
    (b'model_checkpoint_path: "bad\\x"\n', "not a valid UTF-8 path"),                      # a broken escape
    (b'model_checkpoint_path: "a\\000b"\n', "not a valid path"),                           # a NUL byte
    (b'model_checkpoint_path: ""\n', "not a valid path"),
    (b"\xff\xfe garbage", "no model_checkpoint_path"),
    (b" " * (2 << 20), "larger than"),
])
def test_bad_state_file_is_a_checkpoint_error(tmp_path, content, match):
    d = tmp_path / "run"
    write_checkpoint(d / "model.ckpt", {"x": np.ones(2, np.float32)})
    (d / "checkpoint").write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        resolve_prefix(d)
    assert str(d / "checkpoint") in str(e.value)


def test_unusable_paths(tmp_path):
    with pytest.raises(CheckpointError, match="cannot use path"):
        resolve_prefix(tmp_path / ("x" * 5000))
    with pytest.raises(FileNotFoundError):
        resolve_prefix(tmp_path / "a\x00b")


# ------------------------------------------------------------------------------------------------ errors

@pytest.fixture
def ckpt(tmp_path):
    return write_checkpoint(tmp_path / "model.ckpt", _arrays())


def test_flipped_data_byte_is_a_crc_error(ckpt):
    data = Path(str(ckpt) + DATA)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"CRC-32C mismatch for tensor .*" ) as e:
        read_checkpoint(ckpt)
    assert str(data) in str(e.value)
    read_checkpoint(ckpt, verify=False)                                # readable when asked not to verify


def test_truncated_data_file(ckpt):
    data = Path(str(ckpt) + DATA)
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated") as e:
        read_checkpoint(ckpt)
    assert str(data) in str(e.value)
    read_checkpoint(ckpt, names=["a/conv/bias"])                       # tensors before the cut still read


def test_missing_files(ckpt):
    Path(str(ckpt) + DATA).unlink()
    with pytest.raises(FileNotFoundError, match=DATA):
        read_checkpoint(ckpt)
    assert "big" in list_variables(ckpt)                               # the index alone suffices to list
    Path(str(ckpt) + ".index").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.ckpt\.index"):
        read_checkpoint(ckpt)


def test_corrupt_index(ckpt):
    index = Path(str(ckpt) + ".index")
    good = index.read_bytes()
    index.write_bytes(good[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="bad magic") as e:
        list_variables(ckpt)
    assert str(index) in str(e.value)
    index.write_bytes(good[:-60])
    with pytest.raises(CheckpointError, match="bad magic|truncated"):
        read_checkpoint(ckpt)
    index.write_bytes(good[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(ckpt)
    index.write_bytes(good[:30] + good[-48:])                           # footer intact, blocks cut
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(ckpt)
    raw = bytearray(good)
    raw[40] ^= 0x01                                                     # inside the data block
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(ckpt)


def test_unknown_name(ckpt):
    with pytest.raises(KeyError, match="no/such"):
        read_checkpoint(ckpt, names=["big", "no/such"])


def _entry(dtype: int, shape, offset: int, data: bytes, extra: bytes = b"") -> bytes:
    shape_msg = b"".join(tfw._pb_bytes(2, tfw._pb_varint(1, d) if d else b"") for d in shape)
    return (tfw._pb_varint(1, dtype) + tfw._pb_bytes(2, shape_msg) + tfw._pb_varint(4, offset)
            + tfw._pb_varint(5, len(data)) + tfw._pb_fixed32(6, tfc._mask(tfc.crc32c(data))) + extra)


def _raw_bundle(prefix: Path, tensors: dict[str, tuple[int, tuple, bytes, bytes]], big_endian: bool = False) -> Path:
    """A bundle written by hand: {name: (dtype enum, shape, bytes, extra entry fields)}."""
    data, items, offset = b"", [], 0
    for name in sorted(tensors):
        dtype, shape, raw, extra = tensors[name]
        items.append((name.encode(), _entry(dtype, shape, offset, raw, extra)))
        data += raw
        offset += len(raw)
    header = tfw._pb_varint(1, 1) + (tfw._pb_varint(2, 1) if big_endian else b"") + tfw._pb_bytes(3, tfw._pb_varint(1, 1))
    Path(str(prefix) + DATA).write_bytes(data)
    Path(str(prefix) + ".index").write_bytes(tfw._build_table([(b"", header)] + items, block_size=4096,
                                                              restart_interval=16))
    return prefix


def test_bfloat16_big_endian_and_unsupported(tmp_path):
    f = np.array([1.5, -2.0, 3.140625], np.float32)
    bf16 = (f.view(np.uint32) >> 16).astype("<u2").tobytes()
    p = _raw_bundle(tmp_path / "bf", {"bf": (14, (3,), bf16, b""), "i": (3, (2,), np.array([1, -2], "<i4").tobytes(), b"")})
    out = read_checkpoint(p)
    assert _same(out["bf"], f) and _same(out["i"], np.array([1, -2], np.int32))
    assert list_variables(p)["bf"] == ((3,), np.dtype(np.float32))

    p = _raw_bundle(tmp_path / "be", {"x": (1, (2, 2), np.arange(4, dtype=">f4").tobytes(), b"")}, big_endian=True)
    assert _same(read_checkpoint(p)["x"], np.arange(4, dtype=np.float32).reshape(2, 2))

    p = _raw_bundle(tmp_path / "bad", {"weird": (99, (1,), b"\x00" * 4, b""), "var": (21, (), b"", b""),
                                       "part": (1, (4,), b"", tfw._pb_bytes(7, b"")), "ok": (1, (), b"\x00" * 4, b"")})
    assert _same(read_checkpoint(p, names=["ok"])["ok"], np.array(0, np.float32))
    with pytest.raises(CheckpointError, match="unknown dtype enum 99") as e:
        read_checkpoint(p, names=["weird"])
    assert "bad.index" in str(e.value)
    with pytest.raises(NotImplementedError, match="DT_VARIANT"):
        read_checkpoint(p, names=["var"])
    with pytest.raises(NotImplementedError, match="partitioned"):
        read_checkpoint(p, names=["part"])

    p = _raw_bundle(tmp_path / "size", {"x": (1, (3,), b"\x00" * 8, b"")})
    with pytest.raises(CheckpointError, match="expected 12"):
        read_checkpoint(p)
    p = _raw_bundle(tmp_path / "bf_size", {"x": (14, (3,), b"\x00" * 5, b"")})   # an odd size for bfloat16
    with pytest.raises(CheckpointError, match="expected 6"):
        read_checkpoint(p)


# ------------------------------------------------------------------------------------------------ real fixture

def _parity_checkpoints() -> list[Path]:
    root = Path(os.environ.get("PYINPAINT_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "parity"))
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / "model.ckpt.index").is_file())


_REAL = _parity_checkpoints()
_real = pytest.mark.parametrize("fixture_dir", _REAL or [pytest.param(None, marks=pytest.mark.skip(
    reason="no official checkpoint fixture (../shared/parity/*/model.ckpt.index; set PYINPAINT_PARITY_DIR)"))],
    ids=[d.name for d in _REAL] or None)


@_real
def test_real_tf_checkpoint_matches_weights(fixture_dir):
    if not (fixture_dir / "weights.npz").is_file():
        pytest.skip(f"{fixture_dir} has no weights.npz")
    weights = dict(np.load(fixture_dir / "weights.npz", allow_pickle=False))
    out = read_checkpoint(fixture_dir / "model.ckpt")
    assert set(out) == set(weights)
    bad = [k for k in weights if not _same(out[k], weights[k])]
    assert not bad, bad[:10]
    assert list_variables(fixture_dir) == {k: (v.shape, v.dtype) for k, v in sorted(out.items())}


@_real
def test_writer_reproduces_real_tf_checkpoint_bytes(fixture_dir, tmp_path):
    """Our writer, given the same tensors, writes byte-identical files to tf.train.Saver's."""
    ref = fixture_dir / "model.ckpt"
    mine = write_checkpoint(tmp_path / "model.ckpt", read_checkpoint(ref))
    for suffix in (".index", DATA):
        assert Path(str(mine) + suffix).read_bytes() == Path(str(ref) + suffix).read_bytes(), suffix
