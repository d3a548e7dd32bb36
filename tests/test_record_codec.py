"""The zoo's records in compact form (pclc.record_codec): the same bytes back, smaller, and refused when damaged."""

from __future__ import annotations

import gzip
import logging
import math
import zlib

import numpy as np
import pytest

from pclc import record_codec as rc
from pclc import records, zoo
from pclc.files import json_text

N = 2000


def _record(seed: int, **extra) -> bytes:
    """An evaluation record as pclc.evaluate writes one: per-image lists of ints and of widened float32 norms."""
    g = np.random.default_rng(seed)
    label = np.random.default_rng(0).integers(0, 10, N)  # the run's: the same in every record
    l2 = (g.random(N, dtype=np.float32) * 3).astype(np.float32)
    l2[::7] = 0.0
    doc = {
        "adv_accuracy": 12.5,
        "attack": "pgd",
        "eps": 0.1,
        "max_linf": float(np.float32(0.1)),
        "n": N,
        "provenance": {"machine": {"cpu_model": "Some CPU"}, "pid": 7},
        "records": {
            "label": label.tolist(),
            "clean_pred": np.where(np.arange(N) % 9 == 0, 0, label).tolist(),
            "clean_top5": np.random.default_rng(1).integers(0, 10, (N, 5)).tolist(),
            "adv_pred": g.integers(0, 10, N).tolist(),
            "l2": l2.tolist(),
            "linf": [float(np.float32(0.1))] * N,
        },
        **extra,
    }
    return json_text(doc).encode()


def test_a_record_comes_back_byte_for_byte_and_a_run_stores_its_shared_arrays_once():
    a, b = _record(1), _record(2)
    (sa, arrays_a), (sb, arrays_b) = rc.pack(a), rc.pack(b)
    assert set(arrays_a) == set(arrays_b) and len(arrays_a) == 3  # label, clean_pred, clean_top5: one file each
    assert rc.unpack(sa, arrays_a.__getitem__) == a and rc.unpack(sb, arrays_b.__getitem__) == b
    plain = len(gzip.compress(b, 9))
    assert len(sb) < plain / 3  # each further record of the run: its own arrays only
    assert len(sa) + sum(map(len, arrays_a.values())) < plain / 2
    assert rc.is_packed(sa) and not rc.is_packed(gzip.compress(a)) and rc.named_arrays(sa) == set(arrays_a)


@pytest.mark.parametrize(
    "values",
    [
        [0.1] * 100,  # float64 values no float32 holds: kept as float64
        [1.0, 2] * 50,  # ints and floats mixed (1.0 is not 1 in JSON): left as text
        [True, False] * 50,  # bools are no ints
        [-0.0, 0.0, math.inf, -1.5] * 25,  # the sign of zero, infinity
        [[1, 2], [3]] * 50,  # ragged
        [2**70, 1] * 50,  # no integer type holds it
        [-(2**40), 3] * 50,
        ["a"] * 100,
    ],
)
def test_every_kind_of_list_reads_back_exactly(values):
    data = _record(3, extra_list=values, records_nested={"x": values})
    stored, arrays = rc.pack(data)
    assert rc.unpack(stored, arrays.__getitem__) == data


def test_text_the_project_did_not_write_is_kept_plain_and_still_reads_back():
    for data in (b'{"records": {"l2": [' + b", ".join([b"0.5"] * 200) + b"]}}", b"not json", b"[1, 2]"):
        stored, arrays = rc.pack(data)
        assert stored == gzip.compress(data, 9, mtime=0) and not arrays
        assert rc.unpack(stored, {}.__getitem__) == data
    with pytest.raises(rc.RecordError):  # a record that would read back as something else
        rc.pack(b'{"format":"' + rc.FORMAT.encode() + b'","record":{}}')


def test_a_damaged_or_missing_shared_array_is_refused_not_misread(tmp_path, caplog):
    data = _record(4)
    stored, arrays = rc.pack(data)
    name = sorted(arrays)[0]
    other = dict(arrays, **{name: zlib.compress(b"\x01" * len(zlib.decompress(arrays[name])))})  # other content
    with pytest.raises(rc.RecordError, match="does not match its hash"):
        rc.unpack(stored, other.__getitem__)
    rec = tmp_path / "records"
    (rec / "eval").mkdir(parents=True)
    (rec / "eval" / "white-pgd.json.gz").write_bytes(stored)
    with caplog.at_level(logging.WARNING):
        assert zoo.read_record(rec / "eval" / "white-pgd.json.gz") is None  # its arrays are missing
    assert "cannot be read" in caplog.text
    (rec / rc.ARRAYS).mkdir()
    for n, blob in arrays.items():
        (rec / rc.ARRAYS / f"{n}.bin").write_bytes(blob)
    assert zoo.read_record(rec / "eval" / "white-pgd.json.gz") == data


def test_recode_rewrites_plain_records_and_removes_arrays_no_record_names(tmp_path):
    z = tmp_path / "zoo"
    rec = z / "run-a" / "records"
    (rec / "eval").mkdir(parents=True)
    (rec / "audit").mkdir()
    datas = {rec / "eval" / f"r{i}.json.gz": _record(i) for i in range(3)}
    datas[rec / "audit" / "small.json.gz"] = json_text({"accuracy": 1.0, "correct": [0, 1]}).encode()
    for path, data in datas.items():
        path.write_bytes(gzip.compress(data))  # as saved before the codec
    (rec / rc.ARRAYS).mkdir()
    (rec / rc.ARRAYS / "0123456789abcdef.bin").write_bytes(b"left over")
    before = sum(p.stat().st_size for p in datas)

    written = records.recode(z)
    assert sorted(written) == sorted(p for p in datas if "eval" in p.parts)  # the tiny one gains nothing: plain
    assert all(zoo.read_record(p) == data for p, data in datas.items())
    assert sorted(p.stem for p in (rec / rc.ARRAYS).glob("*.bin")) == sorted(rc.pack(_record(0))[1])
    after = sum(p.stat().st_size for p in (rec).rglob("*") if p.is_file())
    assert after < before / 2.5
    assert records.recode(z) == []  # done once: nothing to rewrite, nothing removed
    assert all(zoo.read_record(p) == data for p, data in datas.items())
