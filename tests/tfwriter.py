"""A TensorFlow V2 checkpoint WRITER (``tf.train.Saver``'s tensor bundle), for tests only.

The package reads official checkpoints (:mod:`pyinpaint.tfcheckpoint`) but never writes them; the tests use this
writer to build checkpoints of every shape and flaw without TensorFlow. Given the tensors of a real
``tf.train.Saver`` checkpoint it writes byte-identical files (``tests/test_tfcheckpoint.py`` checks that on the
official fixtures). The format is described in :mod:`pyinpaint.tfcheckpoint`.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from pyinpaint.io import atomic_write
from pyinpaint.tfcheckpoint import _DT_STRING, _M32, _MAGIC, _NO_COMPRESSION, _SNAPPY, _mask, _suffixed, crc32c


def _put_varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)



def _pb_varint(field: int, n: int) -> bytes:
    return _put_varint(field << 3) + _put_varint(n)



def _pb_bytes(field: int, payload: bytes) -> bytes:
    return _put_varint(field << 3 | 2) + _put_varint(len(payload)) + payload



def _pb_fixed32(field: int, n: int) -> bytes:
    return _put_varint(field << 3 | 5) + struct.pack("<I", n)



def _snappy_literal(data: bytes) -> bytes:
    """A valid (uncompressed, literal-only) snappy encoding of ``data``: for tests of the decoder path."""
    out = bytearray(_put_varint(len(data)))
    for i in range(0, len(data), 1 << 16):
        piece = data[i:i + (1 << 16)]
        n = len(piece) - 1
        if n < 60:
            out.append(n << 2)
        else:
            nb = (n.bit_length() + 7) // 8
            out.append((59 + nb) << 2)
            out += n.to_bytes(nb, "little")
        out += piece
    return bytes(out)



def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """LevelDB's BytewiseComparator::FindShortestSeparator: a short key in [start, limit)."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n and start[i] < 0xFF and start[i] + 1 < limit[i]:
        return start[:i] + bytes([start[i] + 1])
    return start



def _short_successor(key: bytes) -> bytes:
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key



class _BlockBuilder:
    def __init__(self, restart_interval: int):
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.count < self.interval:
            n = min(len(self.last), len(key))
            while shared < n and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.count = 0
        self.buf += _put_varint(shared) + _put_varint(len(key) - shared) + _put_varint(len(value))
        self.buf += key[shared:] + value
        self.last = key
        self.count += 1

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def empty(self) -> bool:
        return not self.buf

    def finish(self) -> bytes:
        return bytes(self.buf) + b"".join(struct.pack("<I", r) for r in self.restarts) + struct.pack("<I", len(self.restarts))



def _build_table(items: Iterable[tuple[bytes, bytes]], *, block_size: int, restart_interval: int,
                 snappy: bool = False) -> bytes:
    """An SSTable as TensorFlow's TableBuilder writes it (sorted keys; byte-identical for the same options)."""
    out = bytearray()

    def write_block(builder: _BlockBuilder) -> bytes:
        contents = builder.finish()
        kind = _NO_COMPRESSION
        if snappy:
            contents, kind = _snappy_literal(contents), _SNAPPY
        handle = _put_varint(len(out)) + _put_varint(len(contents))
        out.extend(contents)
        out.append(kind)
        out.extend(struct.pack("<I", _mask(crc32c(bytes([kind]), crc32c(contents)))))
        return handle

    data = _BlockBuilder(restart_interval)
    index = _BlockBuilder(1)
    pending: bytes | None = None
    last = None
    for key, value in items:
        if last is not None and key <= last:
            raise ValueError(f"SSTable keys must be strictly increasing ({last!r} then {key!r})")
        if pending is not None:
            index.add(_shortest_separator(last, key), pending)
            pending = None
        data.add(key, value)
        last = key
        if data.size_estimate() >= block_size:
            pending = write_block(data)
            data = _BlockBuilder(restart_interval)
    if not data.empty():
        pending = write_block(data)
    metaindex = write_block(_BlockBuilder(restart_interval))
    if pending is not None:
        index.add(_short_successor(last), pending)
    index_handle = write_block(index)
    footer = metaindex + index_handle
    out.extend(footer + bytes(40 - len(footer)) + struct.pack("<Q", _MAGIC))
    return bytes(out)


# numpy dtype -> DataType enum (types.proto)
_ENUM_OF = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.uint8): 4,
            np.dtype(np.int16): 5, np.dtype(np.int8): 6, np.dtype(np.complex64): 8, np.dtype(np.int64): 9,
            np.dtype(np.bool_): 10, np.dtype(np.uint16): 17, np.dtype(np.complex128): 18, np.dtype(np.float16): 19,
            np.dtype(np.uint32): 22, np.dtype(np.uint64): 23}



def _encode_tensor(name: str, value) -> tuple[int, tuple[int, ...], bytes, int]:
    """(dtype enum, shape, bytes, crc32c) of one tensor, as TensorFlow's BundleWriter writes it."""
    arr = np.asarray(value)
    if arr.dtype.kind in "SUO":
        flat = [x.encode("utf-8") if isinstance(x, str) else x for x in arr.reshape(-1).tolist()]
        if not all(isinstance(x, (bytes, bytearray)) for x in flat):
            raise TypeError(f"tensor {name!r}: object arrays must hold bytes or str")
        flat = [bytes(x) for x in flat]
        lengths = b"".join(_put_varint(len(x)) for x in flat)
        raw = b"".join(struct.pack("<I", len(x)) if len(x) <= _M32 else struct.pack("<Q", len(x)) for x in flat)
        crc = crc32c(raw)
        length_crc = struct.pack("<I", _mask(crc))
        payload = b"".join(flat)
        crc = crc32c(payload, crc32c(length_crc, crc))
        return _DT_STRING, arr.shape, lengths + length_crc + payload, crc
    native = arr.dtype.newbyteorder("=")
    if native not in _ENUM_OF:
        raise TypeError(f"tensor {name!r}: dtype {arr.dtype} has no TensorFlow checkpoint equivalent")
    data = np.ascontiguousarray(arr, dtype=native.newbyteorder("<") if native.itemsize > 1 else native).tobytes()
    return _ENUM_OF[native], arr.shape, data, crc32c(data)



def write_checkpoint(prefix: str | os.PathLike, arrays: Mapping[str, object], *, write_state: bool = False,
                     block_size: int = 262144, restart_interval: int = 16, _snappy: bool = False) -> Path:
    """Write ``arrays`` as a TensorFlow V2 checkpoint: ``prefix.index`` + ``prefix.data-00000-of-00001``.

    Like tf.train.Saver: tensors stored in sorted name order, one shard, an uncompressed SSTable index
    (TensorFlow's block size and restart interval by default), little-endian, CRC-32C on every tensor.
    Names must be non-empty (TF names without ":0"). numpy dtypes map to the TF dtype of the same
    width; str/bytes arrays become DT_STRING. ``write_state`` also writes the directory's ``checkpoint`` file
    (what tf.train.latest_checkpoint reads). Files are written atomically. Returns the prefix."""
    prefix = Path(prefix)
    if prefix.is_dir():
        raise IsADirectoryError(f"{prefix} is a directory; a checkpoint prefix names files (e.g. {prefix / 'model.ckpt'})")
    keyed = []
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("\x00"):
            raise ValueError(f"invalid tensor name {name!r}: names must be non-empty strings")
        keyed.append((name.encode("utf-8"), name, value))
    keyed.sort(key=lambda t: t[0])
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data_path = _suffixed(prefix, ".data-00000-of-00001")
    index_items = []
    header = _pb_varint(1, 1) + _pb_bytes(3, _pb_varint(1, 1))     # num_shards 1, little-endian, producer 1
    index_items.append((b"", header))

    def write_data(tmp):
        offset = 0
        with open(tmp, "wb") as f:
            for key, name, value in keyed:
                dtype, shape, data, crc = _encode_tensor(name, value)
                f.write(data)
                shape_msg = b"".join(_pb_bytes(2, _pb_varint(1, d) if d else b"") for d in shape)
                entry = _pb_varint(1, dtype) + _pb_bytes(2, shape_msg)
                if offset:
                    entry += _pb_varint(4, offset)
                if data:
                    entry += _pb_varint(5, len(data))
                if _mask(crc):                                      # proto3 omits zero fields
                    entry += _pb_fixed32(6, _mask(crc))
                index_items.append((key, entry))
                offset += len(data)

    atomic_write(data_path, write_data)
    table = _build_table(index_items, block_size=block_size, restart_interval=restart_interval, snappy=_snappy)
    atomic_write(_suffixed(prefix, ".index"), lambda tmp: Path(tmp).write_bytes(table))
    if write_state:
        quoted = prefix.name.replace("\\", "\\\\").replace('"', '\\"')
        text = f'model_checkpoint_path: "{quoted}"\nall_model_checkpoint_paths: "{quoted}"\n'
        atomic_write(prefix.parent / "checkpoint", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return prefix
