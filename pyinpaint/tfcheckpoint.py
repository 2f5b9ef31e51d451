"""Read TensorFlow checkpoints (format V2, the ``tf.train.Saver`` "tensor bundle") without TensorFlow.

The package only reads them; the tests' writer (``tests/tfwriter.py``) builds checkpoints to read.

A V2 checkpoint with prefix ``P`` is ``P.index`` plus one or more data shards ``P.data-NNNNN-of-MMMMM``.

* ``P.index`` is a LevelDB-style SSTable (TensorFlow's ``tsl/lib/io/table``): data blocks of prefix-compressed
  keys with restart points, an empty metaindex block, an index block, and a 48-byte footer ending in the magic
  number 0xdb4775248b80fb57. Every block is followed by a 5-byte trailer: a compression byte (0 none, 1 snappy)
  and the masked CRC-32C of the block and that byte. TensorFlow writes uncompressed blocks; snappy blocks are
  decoded here too (the decoder is small).
* Its keys are tensor names. The empty key holds a ``BundleHeaderProto``; every other value is a
  ``BundleEntryProto`` saying where the tensor's bytes are (shard, offset, size), its dtype and shape, and the
  masked CRC-32C of its bytes. Keys starting with a NUL byte are slices of partitioned variables.
* The data shards hold the raw tensor bytes, little-endian by default, C order.

The few protobuf messages are decoded by hand (wire format: varints, fixed32/64 and length-delimited fields);
the field numbers are those of TensorFlow's ``tensor_bundle.proto``, ``tensor_shape.proto``, ``versions.proto``
and ``types.proto``:

    BundleHeaderProto  { int32 num_shards = 1; Endianness endianness = 2 (LITTLE = 0, BIG = 1);
                         VersionDef version = 3; }
    VersionDef         { int32 producer = 1; int32 min_consumer = 2; repeated int32 bad_consumers = 3; }
    BundleEntryProto   { DataType dtype = 1; TensorShapeProto shape = 2; int32 shard_id = 3; int64 offset = 4;
                         int64 size = 5; fixed32 crc32c = 6; repeated TensorSliceProto slices = 7; }
    TensorShapeProto   { repeated Dim dim = 2 { int64 size = 1; string name = 2; }; bool unknown_rank = 3; }

Supported dtypes: float16/32/64, bfloat16 (returned as float32, exactly), int8/16/32/64, uint8/16/32/64, bool,
complex64/128, the quantized integer types (as their plain integer type) and strings (object arrays of
``bytes``). Partitioned (sliced) variables, resources and variants raise ``NotImplementedError``.

CRC-32C (Castagnoli) is computed with numpy, many lanes at a time, at a few hundred MB/s at most, so
``verify=True`` (the default) stays affordable even for checkpoints of several hundred MB.
"""
from __future__ import annotations

import codecs
import math
import os
import re
import struct
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

__all__ = ["CheckpointError", "read_checkpoint", "list_variables", "resolve_prefix", "crc32c"]

_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48                 # two block handles padded to 40 bytes, then the 8-byte magic
_TRAILER_LEN = 5                 # compression type byte + masked crc32c
_NO_COMPRESSION, _SNAPPY = 0, 1
_MASK_DELTA = 0xA282EAD8
_M32 = 0xFFFFFFFF


class CheckpointError(ValueError):
    """A checkpoint file is malformed, truncated or corrupt (the message names the file)."""


# ------------------------------------------------------------------------------------------------ CRC-32C

def _crc_table() -> np.ndarray:
    """T[k][b]: the CRC register update of byte ``b`` followed by ``k`` zero bytes (slicing-by-4 tables)."""
    t = np.zeros((4, 256), np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        t[0, i] = c
    for k in range(1, 4):
        t[k] = (t[k - 1] >> 8) ^ t[0][t[k - 1] & 0xFF]
    return t


_T = _crc_table()
_T0 = [int(x) for x in _T[0]]


def _crc_update_py(reg: int, data) -> int:
    """Raw register update (no pre/post inversion), one byte at a time: for short inputs."""
    t = _T0
    for b in bytes(data):
        reg = t[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


# The register update is linear over GF(2): after n more bytes, reg' = Z^n(reg) ^ f(0, bytes), where Z^n is
# the update through n zero bytes. Z^(2^k) is kept as the images of the 32 basis vectors.
def _op_apply(op: list[int], v: int) -> int:
    r = 0
    i = 0
    while v:
        if v & 1:
            r ^= op[i]
        v >>= 1
        i += 1
    return r


_ZERO_POW2: list[list[int]] = [[_T0[(1 << i) & 0xFF] ^ ((1 << i) >> 8) for i in range(32)]]   # Z^(2^k)
_ZERO_POW2_TABLES: dict[int, np.ndarray] = {}


def _zero_pow2(k: int) -> list[int]:
    while len(_ZERO_POW2) <= k:
        z = _ZERO_POW2[-1]
        _ZERO_POW2.append([_op_apply(z, x) for x in z])
    return _ZERO_POW2[k]


def _shift_zeros(reg: int, n: int) -> int:
    """Z^n(reg): the register after ``n`` zero bytes."""
    k = 0
    while n:
        if n & 1:
            reg = _op_apply(_zero_pow2(k), reg)
        n >>= 1
        k += 1
    return reg


def _zero_pow2_tables(k: int) -> np.ndarray:
    """(4, 256) lookup tables applying Z^(2^k) to numpy arrays of registers, one byte of the register at a time."""
    tab = _ZERO_POW2_TABLES.get(k)
    if tab is None:
        imgs = np.array(_zero_pow2(k), np.uint32).reshape(4, 8)
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1            # (256, 8)
        tab = np.zeros((4, 256), np.uint32)
        for j in range(8):
            tab ^= np.where(bits[None, :, j] == 1, imgs[:, j:j + 1], np.uint32(0))
        _ZERO_POW2_TABLES[k] = tab
    return tab


_CHUNK = 1 << 22        # bytes per vectorised pass (bounds the temporary copies)


def _crc_raw_numpy(buf: np.ndarray) -> int:
    """f(0, buf): the raw register after ``buf`` from a zero register, computed in K interleaved lanes.

    Zero bytes in front of a zero register leave it zero, so the input is front-padded to K lanes of L bytes
    (L a power of two, read as little-endian words with slicing-by-4); the lane registers are then merged
    pairwise, merge(a, b) = Z^len(b)(a) ^ b, a zero lane in front making the count even where needed."""
    n = buf.size
    log_lane = max(4, min(12, math.isqrt(n).bit_length() - 1))
    lane = 1 << log_lane
    k = -(-n // lane)
    padded = np.zeros(k * lane, np.uint8)
    padded[k * lane - n:] = buf
    words = np.ascontiguousarray(padded.view("<u4").reshape(k, lane // 4).T).astype(np.uint32, copy=False)
    t0, t1, t2, t3 = _T
    reg = np.zeros(k, np.uint32)
    for w in words:
        reg ^= w
        reg = t3[reg & 0xFF] ^ t2[(reg >> 8) & 0xFF] ^ t1[(reg >> 16) & 0xFF] ^ t0[reg >> 24]
    level = log_lane
    while reg.size > 1:
        if reg.size % 2:
            reg = np.concatenate([np.zeros(1, np.uint32), reg])
        tab = _zero_pow2_tables(level)
        a = reg[0::2]
        reg = (tab[0][a & 0xFF] ^ tab[1][(a >> 8) & 0xFF] ^ tab[2][(a >> 16) & 0xFF] ^ tab[3][a >> 24]) ^ reg[1::2]
        level += 1
    return int(reg[0])


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data`` (bytes-like or numpy array), continuing from ``crc`` (like TF's Extend)."""
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    reg = ~crc & _M32
    n = buf.size
    if n < 1024:
        return ~_crc_update_py(reg, buf.tobytes()) & _M32
    for start in range(0, n, _CHUNK):
        part = buf[start:start + _CHUNK]
        reg = _shift_zeros(reg, part.size) ^ _crc_raw_numpy(part)
    return ~reg & _M32


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & _M32) + _MASK_DELTA) & _M32


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & _M32
    return ((rot >> 17) | (rot << 15)) & _M32


# ------------------------------------------------------------------------------------------------ wire formats

def _varint(buf, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise CheckpointError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError(f"{where}: varint longer than 10 bytes")


def _signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def _proto_fields(buf: bytes, where: str) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value): an int for varint/fixed fields, bytes for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos, where)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > end:
                raise CheckpointError(f"{where}: truncated protobuf field {field}")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            if pos + 4 > end:
                raise CheckpointError(f"{where}: truncated protobuf field {field}")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos, where)
            if pos + n > end:
                raise CheckpointError(f"{where}: truncated protobuf field {field}")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise CheckpointError(f"{where}: unsupported protobuf wire type {wire} (field {field})")
        if field == 0:
            raise CheckpointError(f"{where}: invalid protobuf field number 0")
        yield field, wire, value


def _snappy_decompress(buf: bytes, where: str) -> bytes:
    """Decode a raw snappy block (varint length, then literal and copy elements)."""
    n, pos = _varint(buf, 0, where)
    out = bytearray()
    end = len(buf)
    while pos < end:
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:                                   # literal
            length = tag >> 2
            if length >= 60:
                nb = length - 59
                if pos + nb > end:
                    raise CheckpointError(f"{where}: corrupt snappy block (truncated literal length)")
                length = int.from_bytes(buf[pos:pos + nb], "little")
                pos += nb
            length += 1
            if pos + length > end:
                raise CheckpointError(f"{where}: corrupt snappy block (truncated literal)")
            out += buf[pos:pos + length]
            pos += length
            continue
        if kind == 1:                                   # copy, 11-bit offset
            if pos + 1 > end:
                raise CheckpointError(f"{where}: corrupt snappy block (truncated copy)")
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | buf[pos]
            pos += 1
        else:                                           # copy, 16- or 32-bit offset
            nb = 2 if kind == 2 else 4
            if pos + nb > end:
                raise CheckpointError(f"{where}: corrupt snappy block (truncated copy)")
            length = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos:pos + nb], "little")
            pos += nb
        if offset == 0 or offset > len(out):
            raise CheckpointError(f"{where}: corrupt snappy block (copy offset {offset} out of range)")
        if offset >= length:
            start = len(out) - offset
            out += out[start:start + length]
        else:                                           # overlapping copy: a repeated pattern
            pattern = bytes(out[-offset:])
            out += (pattern * (length // offset + 1))[:length]
        if len(out) > n:
            break
    if len(out) != n:
        raise CheckpointError(f"{where}: corrupt snappy block (decoded {len(out)} bytes, header says {n})")
    return bytes(out)


# ------------------------------------------------------------------------------------------------ SSTable

def _read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of an SSTable file, in key order, every block checksum verified."""
    data = path.read_bytes()
    if len(data) < _FOOTER_LEN:
        raise CheckpointError(f"{path}: truncated checkpoint index ({len(data)} bytes, shorter than the "
                              f"{_FOOTER_LEN}-byte SSTable footer)")
    footer = data[-_FOOTER_LEN:]
    magic = int.from_bytes(footer[-8:], "little")
    if magic != _MAGIC:
        raise CheckpointError(f"{path}: bad magic number {magic:#018x} (expected {_MAGIC:#018x}): not a TensorFlow "
                              "V2 checkpoint index, or a truncated one")
    where = f"{path}: footer"
    _, pos = _varint(footer, 0, where)          # metaindex handle (the metaindex block is empty in TF)
    _, pos = _varint(footer, pos, where)
    index_off, pos = _varint(footer, pos, where)
    index_size, pos = _varint(footer, pos, where)
    body = len(data) - _FOOTER_LEN

    def block(offset: int, size: int, what: str) -> bytes:
        if offset + size + _TRAILER_LEN > body:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint index ({what} at bytes "
                                  f"[{offset}, {offset + size + _TRAILER_LEN}) beyond the {body} bytes before the footer)")
        contents = data[offset:offset + size]
        kind = data[offset + size]
        stored = int.from_bytes(data[offset + size + 1:offset + size + _TRAILER_LEN], "little")
        if crc32c(bytes([kind]), crc32c(contents)) != _unmask(stored):
            raise CheckpointError(f"{path}: checksum mismatch in the {what} at byte {offset}: the index file is corrupt")
        if kind == _NO_COMPRESSION:
            return contents
        if kind == _SNAPPY:
            return _snappy_decompress(contents, f"{path}: {what} at byte {offset}")
        raise CheckpointError(f"{path}: {what} at byte {offset} uses compression type {kind} (only none (0) and "
                              "snappy (1) are supported)")

    out: list[tuple[bytes, bytes]] = []
    for _, handle in _block_entries(block(index_off, index_size, "index block"), f"{path}: index block"):
        where = f"{path}: index block"
        off, p = _varint(handle, 0, where)
        size, _ = _varint(handle, p, where)
        out.extend(_block_entries(block(off, size, "data block"), f"{path}: data block at byte {off}"))
    for (a, _), (b, _) in zip(out, out[1:]):
        if a >= b:
            raise CheckpointError(f"{path}: keys out of order ({a!r} then {b!r}): the index file is corrupt")
    return out


def _block_entries(blk: bytes, where: str) -> list[tuple[bytes, bytes]]:
    if len(blk) < 4:
        raise CheckpointError(f"{where}: block of {len(blk)} bytes is too short")
    num_restarts = int.from_bytes(blk[-4:], "little")
    limit = len(blk) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"{where}: corrupt block ({num_restarts} restart points do not fit)")
    entries = []
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = _varint(blk, pos, where)
        unshared, pos = _varint(blk, pos, where)
        vlen, pos = _varint(blk, pos, where)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise CheckpointError(f"{where}: corrupt block entry at byte {pos}")
        key = key[:shared] + blk[pos:pos + unshared]
        pos += unshared
        entries.append((key, blk[pos:pos + vlen]))
        pos += vlen
    return entries


# ------------------------------------------------------------------------------------------------ bundle

# DataType enum (types.proto) -> numpy dtype. DT_BFLOAT16 (14) is special-cased (read as float32, exactly).
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.float64), 3: np.dtype(np.int32), 4: np.dtype(np.uint8),
    5: np.dtype(np.int16), 6: np.dtype(np.int8), 7: np.dtype(object), 8: np.dtype(np.complex64),
    9: np.dtype(np.int64), 10: np.dtype(np.bool_), 11: np.dtype(np.int8), 12: np.dtype(np.uint8),   # qint8, quint8
    13: np.dtype(np.int32), 14: np.dtype(np.float32), 15: np.dtype(np.int16), 16: np.dtype(np.uint16),  # qint32, bf16, q(u)int16
    17: np.dtype(np.uint16), 18: np.dtype(np.complex128), 19: np.dtype(np.float16), 22: np.dtype(np.uint32),
    23: np.dtype(np.uint64),
}
_DT_STRING, _DT_BFLOAT16 = 7, 14
_UNSUPPORTED = {20: "DT_RESOURCE", 21: "DT_VARIANT"}


class _Entry:
    __slots__ = ("name", "dtype", "shape", "shard", "offset", "size", "crc", "sliced")

    def __init__(self, name: str, value: bytes, where: str):
        self.name = name
        self.dtype = self.shard = self.offset = self.size = 0
        self.crc = 0                         # proto3: an absent field is zero
        self.shape: tuple[int, ...] = ()
        self.sliced = False
        for field, wire, v in _proto_fields(value, where):
            if field == 1 and wire == 0:
                self.dtype = v
            elif field == 2 and wire == 2:
                self.shape = _parse_shape(v, where)
            elif field == 3 and wire == 0:
                self.shard = _signed64(v)
            elif field == 4 and wire == 0:
                self.offset = _signed64(v)
            elif field == 5 and wire == 0:
                self.size = _signed64(v)
            elif field == 6 and wire == 5:
                self.crc = v
            elif field == 7:
                self.sliced = True
        if self.shard < 0 or self.offset < 0 or self.size < 0 or any(d < 0 for d in self.shape):
            raise CheckpointError(f"{where}: negative shard, offset, size or dimension")
        if self.dtype > 100:                 # reference types (DT_FLOAT_REF = 101, ...) store their base type
            self.dtype -= 100

    def np_dtype(self, where: str) -> np.dtype:
        if self.dtype in _DTYPES:
            return _DTYPES[self.dtype]
        if self.dtype in _UNSUPPORTED:
            return np.dtype(np.void)
        raise CheckpointError(f"{where}: unknown dtype enum {self.dtype} for tensor {self.name!r}")


def _parse_shape(buf: bytes, where: str) -> tuple[int, ...]:
    dims = []
    for field, wire, v in _proto_fields(buf, where):
        if field == 2 and wire == 2:
            size = 0
            for f2, w2, v2 in _proto_fields(v, where):
                if f2 == 1 and w2 == 0:
                    size = _signed64(v2)
            dims.append(size)
        elif field == 3 and wire == 0 and v:
            raise CheckpointError(f"{where}: tensor of unknown rank")
    return tuple(dims)


class _Bundle:
    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.index_path = _suffixed(prefix, ".index")
        if not self.index_path.is_file():
            raise FileNotFoundError(f"checkpoint index {self.index_path} does not exist")
        self.num_shards = 0
        self.big_endian = False
        self.entries: dict[str, _Entry] = {}
        header = None
        for key, value in _read_table(self.index_path):
            if key == b"":
                header = value
            elif key[:1] == b"\x00":          # a slice of a partitioned variable (OrderedCode-encoded key)
                continue
            else:
                name = key.decode("utf-8", errors="surrogateescape")
                self.entries[name] = _Entry(name, value, f"{self.index_path}: entry {name!r}")
        if header is None:
            raise CheckpointError(f"{self.index_path}: no bundle header (empty key): not a TensorFlow V2 checkpoint")
        self._parse_header(header)

    def _parse_header(self, header: bytes) -> None:
        where = f"{self.index_path}: bundle header"
        min_consumer, bad = 0, []
        for field, wire, v in _proto_fields(header, where):
            if field == 1 and wire == 0:
                self.num_shards = _signed64(v)
            elif field == 2 and wire == 0:
                if v not in (0, 1):
                    raise CheckpointError(f"{where}: unknown endianness {v}")
                self.big_endian = v == 1
            elif field == 3 and wire == 2:
                for f2, w2, v2 in _proto_fields(v, where):
                    if f2 == 2 and w2 == 0:
                        min_consumer = v2
                    elif f2 == 3 and w2 == 0:
                        bad.append(v2)
                    elif f2 == 3 and w2 == 2:       # packed repeated
                        p = 0
                        while p < len(v2):
                            x, p = _varint(v2, p, where)
                            bad.append(x)
        if self.num_shards < 1:
            raise CheckpointError(f"{where}: invalid number of shards {self.num_shards}")
        if min_consumer > 1 or 1 in bad:
            raise CheckpointError(f"{where}: written for a newer checkpoint reader (min_consumer {min_consumer}, "
                                  f"bad_consumers {bad}); this reader implements version 1")
        for e in self.entries.values():
            if e.shard >= self.num_shards:
                raise CheckpointError(f"{where}: tensor {e.name!r} is in shard {e.shard} of {self.num_shards}")

    def shard_path(self, shard: int) -> Path:
        return _suffixed(self.prefix, f".data-{shard:05d}-of-{self.num_shards:05d}")

    def read(self, names: list[str], verify: bool) -> dict[str, np.ndarray]:
        todo = [self.entries[n] for n in names]
        for e in todo:
            where = f"{self.index_path}: tensor {e.name!r}"
            if e.sliced:
                raise NotImplementedError(f"{where} is a partitioned (sliced) variable, which this reader does not "
                                          "support")
            if e.dtype in _UNSUPPORTED:
                raise NotImplementedError(f"{where} has dtype {_UNSUPPORTED[e.dtype]}, which this reader does not support")
            dt = e.np_dtype(where)
            if e.dtype != _DT_STRING:
                expected = math.prod(e.shape) * (2 if e.dtype == _DT_BFLOAT16 else dt.itemsize)
                if e.size != expected:
                    raise CheckpointError(f"{where}: {e.size} bytes for shape {e.shape} of {dt} (expected {expected})")
        out: dict[str, np.ndarray] = {}
        by_shard: dict[int, list[_Entry]] = {}
        for e in todo:
            by_shard.setdefault(e.shard, []).append(e)
        for shard, group in sorted(by_shard.items()):
            path = self.shard_path(shard)
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint data file {path} does not exist (needed for tensor "
                                        f"{group[0].name!r})")
            file_size = path.stat().st_size
            with open(path, "rb") as f:
                for e in sorted(group, key=lambda e: e.offset):
                    if e.offset + e.size > file_size:
                        raise CheckpointError(f"{path}: truncated: tensor {e.name!r} needs bytes [{e.offset}, "
                                              f"{e.offset + e.size}) but the file has {file_size} bytes")
                    f.seek(e.offset)
                    buf = bytearray(e.size)
                    if f.readinto(buf) != e.size:
                        raise CheckpointError(f"{path}: truncated while reading tensor {e.name!r}")
                    out[e.name] = self._decode(e, buf, path, verify)
        return {n: out[n] for n in names}

    def _decode(self, e: _Entry, buf: bytearray, path: Path, verify: bool) -> np.ndarray:
        if e.dtype == _DT_STRING:
            return self._decode_strings(e, buf, path, verify)
        if verify:
            self._check_crc(e, crc32c(buf), path)
        order = ">" if self.big_endian else "<"
        if e.dtype == _DT_BFLOAT16:
            half = np.frombuffer(buf, np.dtype(np.uint16).newbyteorder(order))
            if half.size != math.prod(e.shape):
                raise CheckpointError(f"{path}: tensor {e.name!r}: {e.size} bytes for bfloat16 shape {e.shape}")
            return (half.astype(np.uint32) << 16).view(np.float32).reshape(e.shape)
        dt = _DTYPES[e.dtype]
        arr = np.frombuffer(buf, dt.newbyteorder(order) if dt.itemsize > 1 else dt).reshape(e.shape)
        if arr.dtype != dt:
            arr = arr.astype(dt)
        return arr

    def _check_crc(self, e: _Entry, actual: int, path: Path) -> None:
        if actual != _unmask(e.crc):
            raise CheckpointError(f"{path}: CRC-32C mismatch for tensor {e.name!r} (bytes [{e.offset}, "
                                  f"{e.offset + e.size})): the data file is corrupt")

    def _decode_strings(self, e: _Entry, buf: bytearray, path: Path, verify: bool) -> np.ndarray:
        # [varint64 len_0 .. len_n-1][masked crc32c of the lengths, each as uint32 (uint64 if larger)][bytes...]
        where = f"{path}: string tensor {e.name!r}"
        n = math.prod(e.shape)
        lengths, pos = [], 0
        for _ in range(n):
            ln, pos = _varint(buf, pos, where)
            lengths.append(ln)
        raw = b"".join(struct.pack("<I", ln) if ln <= _M32 else struct.pack("<Q", ln) for ln in lengths)
        if pos + 4 + sum(lengths) != len(buf):
            raise CheckpointError(f"{where}: {len(buf)} bytes do not match the string lengths")
        if verify:
            crc = crc32c(raw)
            if int.from_bytes(buf[pos:pos + 4], "little") != _mask(crc):
                raise CheckpointError(f"{where}: checksum mismatch of the string lengths: the data file is corrupt")
            self._check_crc(e, crc32c(buf[pos:], crc), path)
        pos += 4
        arr = np.empty(n, dtype=object)
        for i, ln in enumerate(lengths):
            arr[i] = bytes(buf[pos:pos + ln])
            pos += ln
        return arr.reshape(e.shape)


def _suffixed(prefix: Path, suffix: str) -> Path:
    return prefix.parent / (prefix.name + suffix)


_DATA_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_RE = re.compile(r"""^\s*model_checkpoint_path\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""", re.M)


_MAX_STATE_BYTES = 1 << 20       # a 'checkpoint' state file names a few paths


def _stat(p: Path, test, what: str) -> bool:
    """``test(p)`` (is_file, is_dir), with a path the OS refuses (too long, ...) a CheckpointError naming ``what``."""
    try:
        return test(p)
    except OSError as e:
        raise CheckpointError(f"{what}: cannot use path {str(p)[:200]!r}{'...' if len(str(p)) > 200 else ''}: "
                              f"{e.strerror or e}") from None


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:
        return False


def _state_prefix(d: Path, state: Path) -> Path:
    """The prefix that the directory's ``checkpoint`` state file (a text CheckpointState proto) names."""
    with open(state, "rb") as f:
        raw_text = f.read(_MAX_STATE_BYTES + 1)
    if len(raw_text) > _MAX_STATE_BYTES:
        raise CheckpointError(f"{state}: larger than {_MAX_STATE_BYTES} bytes, not a checkpoint state file")
    m = _STATE_RE.search(raw_text.decode("utf-8", errors="replace"))
    if not m:
        raise CheckpointError(f"{state}: no model_checkpoint_path entry")
    raw = m.group(1) if m.group(1) is not None else m.group(2)
    try:
        name = codecs.escape_decode(raw.encode("utf-8"))[0].decode("utf-8")
    except (ValueError, UnicodeError) as e:          # a bad escape; bytes that are not UTF-8
        raise CheckpointError(f"{state}: model_checkpoint_path is not a valid UTF-8 path ({e})") from None
    if not name or "\x00" in name:
        raise CheckpointError(f"{state}: model_checkpoint_path {name!r} is not a valid path")
    target = Path(name)
    prefix = target if target.is_absolute() else d / target
    what = f"{state} names checkpoint {name[:200]!r}"
    if not _stat(_suffixed(prefix, ".index"), Path.is_file, what) and _is_file(_suffixed(d / target.name, ".index")):
        prefix = d / target.name
    if not _stat(_suffixed(prefix, ".index"), Path.is_file, what):
        raise FileNotFoundError(f"{state} names checkpoint {prefix}, but {_suffixed(prefix, '.index')} "
                                "does not exist")
    return prefix


def resolve_prefix(path: str | os.PathLike) -> Path:
    """The checkpoint prefix for ``path``: the prefix itself, its ``.index`` file, one of its ``.data-*`` files,
    its ``.meta`` graph, or a directory whose ``checkpoint`` state file names the latest checkpoint (relative
    paths are taken relative to that directory; an absolute one that no longer exists falls back to the same
    name inside the directory, for moved checkpoints). Raises FileNotFoundError when no ``.index`` file exists."""
    p = Path(path).expanduser()
    if _stat(p, lambda q: q.is_dir(), f"checkpoint path {path}"):
        state = p / "checkpoint"
        if state.is_file():
            return _state_prefix(p, state)
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        raise FileNotFoundError(f"{p} is a directory without a 'checkpoint' state file and with "
                                f"{len(indexes)} '.index' files: pass a checkpoint prefix")
    name = p.name
    if name.endswith(".index"):
        p = p.with_name(name[: -len(".index")])
    elif _DATA_RE.search(name):
        p = p.with_name(_DATA_RE.sub("", name))
    elif name.endswith(".meta") and _is_file(_suffixed(p.with_name(name[: -len(".meta")]), ".index")):
        p = p.with_name(name[: -len(".meta")])
    index = _suffixed(p, ".index")
    if not _stat(index, Path.is_file, f"checkpoint path {path}"):
        hint = " (a single-file V1 checkpoint? only format V2 is supported)" if _is_file(p) else ""
        raise FileNotFoundError(f"no TensorFlow checkpoint at {path}: {index} does not exist{hint}")
    return p


def list_variables(prefix: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, numpy dtype)} of every tensor of a checkpoint, in key order, without reading the data.

    Strings are ``object``, bfloat16 ``float32`` (as read_checkpoint returns them); resources and variants
    ``void`` (read_checkpoint does not read those)."""
    bundle = _Bundle(resolve_prefix(prefix))
    return {name: (e.shape, e.np_dtype(f"{bundle.index_path}")) for name, e in bundle.entries.items()}


def read_checkpoint(prefix: str | os.PathLike, *, names: Iterable[str] | None = None,
                    verify: bool = True) -> dict[str, np.ndarray]:
    """{name: array} of a TensorFlow V2 checkpoint (all tensors in key order, or ``names`` in that order).

    ``prefix`` is anything resolve_prefix accepts. ``verify`` checks every tensor's CRC-32C (SSTable block
    checksums of the index are always checked). The arrays are writable and in native byte order."""
    if isinstance(names, str):
        names = [names]
    bundle = _Bundle(resolve_prefix(prefix))
    wanted = list(bundle.entries) if names is None else list(dict.fromkeys(names))
    missing = [n for n in wanted if n not in bundle.entries]
    if missing:
        raise KeyError(f"{bundle.index_path}: no tensor named {', '.join(map(repr, missing[:10]))}"
                       f"{' ...' if len(missing) > 10 else ''} ({len(bundle.entries)} tensors in the checkpoint)")
    return bundle.read(wanted, verify)


