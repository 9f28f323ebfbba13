"""Megatron .bin/.idx layout: round trip, byte compatibility with an independent implementation, corrupt files."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from megadrp.data import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter

CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


def spec_write(prefix, docs, dtype_code=8):
    """Independent writer from Megatron-LM's MMapIndexedDataset layout (struct + numpy, one sequence per doc)."""
    dtype = np.dtype(CODES[dtype_code])
    sizes = [len(d) for d in docs]
    with open(f"{prefix}.bin", "wb") as f:
        for d in docs:
            f.write(np.asarray(d, dtype=dtype).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", dtype_code))
        f.write(struct.pack("<Q", len(docs)))
        f.write(struct.pack("<Q", len(docs) + 1))
        f.write(struct.pack(f"<{len(sizes)}i", *sizes))
        offset = 0
        for s in sizes:
            f.write(struct.pack("<q", offset))
            offset += s * dtype.itemsize
        f.write(struct.pack(f"<{len(docs) + 1}q", *range(len(docs) + 1)))


def spec_read(prefix):
    """Independent reader: parse the header by hand, then slice .bin with the pointers."""
    raw = open(f"{prefix}.idx", "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    (version,), (code,) = struct.unpack_from("<Q", raw, 9), struct.unpack_from("<B", raw, 17)
    (n,), (n_doc,) = struct.unpack_from("<Q", raw, 18), struct.unpack_from("<Q", raw, 26)
    assert version == 1
    sizes = struct.unpack_from(f"<{n}i", raw, 34)
    pointers = struct.unpack_from(f"<{n}q", raw, 34 + 4 * n)
    doc_idx = struct.unpack_from(f"<{n_doc}q", raw, 34 + 12 * n)
    dtype = np.dtype(CODES[code])
    data = open(f"{prefix}.bin", "rb").read()
    seqs = [np.frombuffer(data, dtype=dtype, count=s, offset=p) for s, p in zip(sizes, pointers)]
    return [np.concatenate(seqs[a:b]) if b > a else np.zeros(0, dtype) for a, b in zip(doc_idx[:-1], doc_idx[1:])], code


def random_docs(seed=0, n=37, vocab=50000):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(0, 300))) for _ in range(n)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_round_trip(tmp_path, dtype):
    docs = random_docs()
    with IndexedDatasetWriter(tmp_path / "x", dtype) as w:
        for d in docs:
            w.add_document(d)
    ds = IndexedDataset(tmp_path / "x")
    assert len(ds) == len(docs) and ds.dtype == np.dtype(dtype)
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
    np.testing.assert_array_equal(ds.document_lengths, [len(d) for d in docs])
    assert ds.num_tokens == sum(len(d) for d in docs)
    assert ds.max_token_id() == max(int(d.max()) for d in docs if len(d))


def test_ours_is_byte_identical_to_spec_writer(tmp_path):
    docs = random_docs(1)
    spec_write(tmp_path / "spec", docs, 8)
    with IndexedDatasetWriter(tmp_path / "ours", np.uint16) as w:
        for d in docs:
            w.add_document(d)
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"spec.{ext}").read_bytes()


def test_spec_file_reads_back_and_ours_reads_in_spec_reader(tmp_path):
    docs = random_docs(2, vocab=2**31 - 1)
    spec_write(tmp_path / "spec", docs, 4)
    ds = IndexedDataset(tmp_path / "spec")
    assert ds.dtype == np.int32
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
    with IndexedDatasetWriter(tmp_path / "ours", np.int32) as w:
        for d in docs:
            w.add_document(d)
    back, code = spec_read(tmp_path / "ours")
    assert code == 4
    for a, b in zip(back, docs):
        np.testing.assert_array_equal(a, b)


def test_multi_sequence_documents(tmp_path):
    """Megatron's sentence-split output: a document is the concatenation of its sequences."""
    with IndexedDatasetWriter(tmp_path / "s", np.uint16) as w:
        w.add_item([1, 2])
        w.add_item([3])
        w.end_document()
        w.end_document()  # a document without sequences
        w.add_item([4, 5, 6])
        w.end_document()
    ds = IndexedDataset(tmp_path / "s")
    assert len(ds) == 3
    assert ds[0].tolist() == [1, 2, 3] and ds[1].tolist() == [] and ds[2].tolist() == [4, 5, 6]
    assert ds.document_lengths.tolist() == [3, 0, 3]
    back, _ = spec_read(tmp_path / "s")
    assert [b.tolist() for b in back] == [[1, 2, 3], [], [4, 5, 6]]


def test_writer_rejects_ids_that_do_not_fit(tmp_path):
    w = IndexedDatasetWriter(tmp_path / "big", np.uint16)
    with pytest.raises(ValueError, match="do not fit uint16"):
        w.add_document([1, 70000])
    w.abort()
    assert not (tmp_path / "big.bin").exists() and not (tmp_path / "big.bin.tmp").exists()


@pytest.fixture
def good(tmp_path):
    spec_write(tmp_path / "g", random_docs(3, n=5, vocab=1000), 8)
    return tmp_path / "g"


def _patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_corrupt_magic(good):
    _patch(good.with_suffix(".idx"), 0, b"NOTMEGAT\x00")
    with pytest.raises(IndexedDatasetError, match=r"g\.idx: not a Megatron MMapIndexedDataset index.*preprocess"):
        IndexedDataset(good)


def test_corrupt_version(good):
    _patch(good.with_suffix(".idx"), 9, struct.pack("<Q", 2))
    with pytest.raises(IndexedDatasetError, match=r"g\.idx: unsupported index version 2"):
        IndexedDataset(good)


def test_corrupt_dtype_code(good):
    _patch(good.with_suffix(".idx"), 17, bytes([9]))
    with pytest.raises(IndexedDatasetError, match=r"g\.idx: unknown dtype code 9"):
        IndexedDataset(good)


def test_truncated_header(good):
    idx = good.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:20])
    with pytest.raises(IndexedDatasetError, match=r"g\.idx: truncated index \(20 bytes"):
        IndexedDataset(good)


def test_truncated_index_body(good):
    idx = good.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:-8])
    with pytest.raises(IndexedDatasetError, match=r"g\.idx: index truncated"):
        IndexedDataset(good)


def test_truncated_bin(good):
    b = good.with_suffix(".bin")
    b.write_bytes(b.read_bytes()[:-4])
    with pytest.raises(IndexedDatasetError, match=r"g\.bin: holds \d+ bytes but g\.idx describes \d+ \(truncated\)"):
        IndexedDataset(good)


def test_odd_bin_length(good):
    b = good.with_suffix(".bin")
    b.write_bytes(b.read_bytes() + b"\x01")
    with pytest.raises(IndexedDatasetError, match=r"g\.bin: size \d+ bytes is not a multiple"):
        IndexedDataset(good)


def test_bad_pointer(good):
    idx = good.with_suffix(".idx")
    _patch(idx, 34 + 4 * 5 + 8 * 2, struct.pack("<q", 3))
    with pytest.raises(IndexedDatasetError, match=r"g\.idx: pointer of sequence 2 is 3"):
        IndexedDataset(good)


def test_missing_files(tmp_path, good):
    good.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"g\.bin: no such file.*preprocess"):
        IndexedDataset(good)


def test_check_vocab_names_fix(tmp_path):
    with IndexedDatasetWriter(tmp_path / "v", np.uint16) as w:
        w.add_document([5, 400, 7])
    ds = IndexedDataset(tmp_path / "v")
    ds.check_vocab(401)
    with pytest.raises(IndexedDatasetError, match=r"v\.bin: token id 400 .*vocabulary 400.*--tokenizer"):
        ds.check_vocab(400)
