"""Compact, exact storage of the evaluation records carried in the zoo (pclc.records).

A record (pclc.evaluate, pclc.audit) is pretty-printed JSON with per-image lists. Kept as gzip of that text, a
full-test-set evaluation record took ~125 KB: most of it the perturbation norms' decimal texts (float32 values widened
to float64, printed with 17 digits) and the labels, clean predictions and top-5 classes that every record of a run
repeats. Here each long list of ints or of floats becomes a typed array (the smallest integer type that holds it;
float32 where every value is a widened float32, else float64), its byte planes split apart (the exponent bytes of
similar numbers then compress) and zlib-compressed; the arrays every record of a run shares (``SHARED``) are written
once per run, under ``records/arrays/<hash>.bin``, named by their content's hash and checked against it on reading.

Decoding gives the record back byte for byte: :func:`pack` decodes what it made before it answers and keeps the
plain text when the two differ (a file this project did not write, a value no array type holds), so the codec can
make a record smaller and never different.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from pclc.files import json_text

FORMAT = "pclc-record/1"  # the stored document's ``format``; a record without it is the plain text, gzipped
ARRAYS = "arrays"  # records/<ARRAYS>/<hash>.bin: the arrays shared by a run's records
SHARED = frozenset({"label", "clean_pred", "clean_top5"})  # the same in every record of a run on one test set
MIN_LEN = 64  # a shorter list stays JSON: an array's description would be longer than its text
_INTS = [np.dtype(t) for t in ("<u1", "<i1", "<u2", "<i2", "<i4", "<i8")]


class RecordError(ValueError):
    """A stored record that cannot be decoded (damaged, or an array missing or not matching its hash)."""


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: the same record gives the same bytes


def _typed(values: list) -> np.ndarray | None:
    """``values`` as an exact typed array (1-D, or 2-D when every item is a list of the same length), else None."""
    flat, shape = values, [len(values)]
    if all(type(v) is list for v in values):
        width = {len(v) for v in values}
        if len(width) != 1 or 0 in width:
            return None
        flat, shape = [x for v in values for x in v], [len(values), width.pop()]
    if all(type(x) is int for x in flat):  # not bool (JSON's true is no 1), nor a float that prints as 1.0
        lo, hi = min(flat), max(flat)
        dtype = next((t for t in _INTS if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max), None)
        return None if dtype is None else np.array(flat, dtype=dtype).reshape(shape)
    if all(type(x) is float for x in flat):
        wide = np.array(flat, dtype="<f8")
        narrow = wide.astype("<f4")
        exact = np.array_equal(narrow.astype("<f8"), wide, equal_nan=True) and np.array_equal(
            np.signbit(narrow), np.signbit(wide)
        )
        return (narrow if exact else wide).reshape(shape)
    return None


def _raw(a: np.ndarray) -> bytes:
    """The array's bytes, byte planes apart (all first bytes, then all second bytes, ...)."""
    return np.ascontiguousarray(a.reshape(-1).view(np.uint8).reshape(-1, a.itemsize).T).tobytes()


def _from_raw(raw: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    dt = np.dtype(dtype)
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dt.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dt).reshape(shape)


def _name(dtype: str, shape: list[int], raw: bytes) -> str:
    return hashlib.sha256(f"{dtype}{shape}".encode() + raw).hexdigest()[:16]


def _encode(doc: dict, blobs: dict[str, bytes], shared: bool = False) -> dict:
    out = {}
    for k, v in doc.items():
        a = _typed(v) if isinstance(v, list) and len(v) >= MIN_LEN else None
        if isinstance(v, dict):
            out[k] = _encode(v, blobs, shared or k == "records")
        elif a is None:
            out[k] = v
        else:
            raw, ref = _raw(a), {"dtype": a.dtype.str, "shape": list(a.shape)}
            if shared and k in SHARED:
                ref["array"] = _name(ref["dtype"], ref["shape"], raw)
                blobs[ref["array"]] = zlib.compress(raw, 9)
            else:
                ref["zlib"] = base64.b64encode(zlib.compress(raw, 9)).decode()
            out[k] = {"$array": ref}
    return out


def _decode(doc: Any, blob: Callable[[str], bytes]) -> Any:
    if not isinstance(doc, dict):
        return doc
    if set(doc) == {"$array"}:
        ref = doc["$array"]
        if "array" in ref:
            raw = zlib.decompress(blob(ref["array"]))
            if _name(ref["dtype"], ref["shape"], raw) != ref["array"]:
                raise RecordError(f"array {ref['array']} does not match its hash")
        else:
            raw = zlib.decompress(base64.b64decode(ref["zlib"]))
        return _from_raw(raw, ref["dtype"], ref["shape"]).tolist()  # float32 widens to the float64 it was
    return {k: _decode(v, blob) for k, v in doc.items()}


def _packed(data: bytes) -> bool:
    return data.startswith(b'{"format":"' + FORMAT.encode())


def is_packed(stored: bytes) -> bool:
    """Whether a stored record is in this codec's form (else plain gzipped text, as saved before it)."""
    try:
        return _packed(gzip.decompress(stored))
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return False


def named_arrays(stored: bytes) -> set[str]:
    """The shared arrays a stored record names (none for a plain one)."""
    data = gzip.decompress(stored)
    found: set[str] = set()

    def walk(doc: Any) -> None:
        if isinstance(doc, dict):
            if set(doc) == {"$array"} and "array" in doc["$array"]:
                found.add(doc["$array"]["array"])
            for v in doc.values():
                walk(v)

    if _packed(data):
        walk(json.loads(data)["record"])
    return found


def same_array(stored: bytes, new: bytes) -> bool:
    """Whether a shared array file already holds ``new``'s content (zlib's bytes may differ between builds)."""
    try:
        return zlib.decompress(stored) == zlib.decompress(new)
    except zlib.error:
        return False


def unpack(stored: bytes, blob: Callable[[str], bytes]) -> bytes:
    """A stored record's original bytes; ``blob(name)`` reads a shared array. Raises RecordError (or OSError from
    ``blob``) when it cannot."""
    try:
        data = gzip.decompress(stored)
        if not _packed(data):
            return data  # plain text (every record saved before this codec)
        doc = json.loads(data)
        return json_text(_decode(doc["record"], blob)).encode()
    except (EOFError, zlib.error, gzip.BadGzipFile, ValueError, KeyError, TypeError) as e:
        raise RecordError(str(e)) from e


def pack(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    """``data`` (a record's bytes) as stored: the file's bytes and the shared arrays it names ({hash: bytes}).
    Plain gzip of ``data`` when the codec cannot give it back exactly or gains nothing."""
    plain = _gz(data)
    if _packed(data):
        raise RecordError("a record that looks like a stored one cannot be stored")  # it would not read back
    try:
        doc = json.loads(data)
    except ValueError:
        return plain, {}
    if not isinstance(doc, dict) or json_text(doc).encode() != data:
        return plain, {}
    blobs: dict[str, bytes] = {}
    stored = _gz(json.dumps({"format": FORMAT, "record": _encode(doc, blobs)}, separators=(",", ":")).encode())
    try:
        same = unpack(stored, blobs.__getitem__) == data
    except (RecordError, KeyError):
        same = False
    return (stored, blobs) if same and len(stored) < len(plain) else (plain, {})
