"""Indexed dataset format, synthetic corpus and Megatron sample order (workloads/gpt/data.py)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from workloads.gpt.data import (
    DataError,
    GPTSamples,
    IndexedDataset,
    MicroBatchIterator,
    build_synthetic_corpus,
    eod_token,
    write_indexed_dataset,
)


def _megatron_idx_bytes(sizes: list[int], code: int) -> bytes:
    """The .idx bytes Megatron's _IndexWriter produces, spelled out field by field."""
    itemsize = {4: 4, 8: 2}[code]
    pointers, p = [], 0
    for s in sizes:
        pointers.append(p)
        p += s * itemsize
    out = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code)
    out += struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(sizes) + 1)
    out += np.array(sizes, dtype=np.int32).tobytes()
    out += np.array(pointers, dtype=np.int64).tobytes()
    out += np.arange(len(sizes) + 1, dtype=np.int64).tobytes()
    return out


def test_write_matches_megatron_byte_layout_and_reads_back(tmp_path: Path) -> None:
    docs = [[5, 6, 7], [1], [9, 8, 7, 6, 5], []]
    write_indexed_dataset(tmp_path / "c", docs, dtype=np.int32)
    assert (tmp_path / "c.idx").read_bytes() == _megatron_idx_bytes([3, 1, 5, 0], code=4)
    assert (tmp_path / "c.bin").read_bytes() == np.array([5, 6, 7, 1, 9, 8, 7, 6, 5], np.int32).tobytes()
    ds = IndexedDataset(tmp_path / "c")
    assert len(ds) == 4
    assert ds.sizes.tolist() == [3, 1, 5, 0]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3, 4]
    for i, d in enumerate(docs):
        assert ds[i].tolist() == d
    assert ds.get(2, 1, 3).tolist() == [8, 7, 6]
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_reads_a_file_written_independently_in_megatron_layout(tmp_path: Path) -> None:
    sizes = [4, 2]
    (tmp_path / "m.idx").write_bytes(_megatron_idx_bytes(sizes, code=8))
    (tmp_path / "m.bin").write_bytes(np.array([1, 2, 3, 4, 60000, 7], np.uint16).tobytes())
    ds = IndexedDataset(tmp_path / "m")
    assert ds.dtype == np.uint16
    assert ds[0].tolist() == [1, 2, 3, 4] and ds[1].tolist() == [60000, 7]


@pytest.mark.parametrize("damage", ["missing_idx", "missing_bin", "bad_magic", "truncated_idx", "truncated_bin", "bad_version"])
def test_damaged_files_raise_data_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    write_indexed_dataset(tmp_path / "d", [[1, 2, 3], [4, 5]], dtype=np.int32)
    idx, bin_ = tmp_path / "d.idx", tmp_path / "d.bin"
    target = {"missing_idx": idx, "missing_bin": bin_, "bad_magic": idx, "truncated_idx": idx,
              "truncated_bin": bin_, "bad_version": idx}[damage]
    if damage.startswith("missing"):
        target.unlink()
    elif damage == "bad_magic":
        target.write_bytes(b"NOTANIDX!" + target.read_bytes()[9:])
    elif damage == "bad_version":
        raw = bytearray(target.read_bytes())
        raw[9:17] = struct.pack("<Q", 2)
        target.write_bytes(bytes(raw))
    else:
        target.write_bytes(target.read_bytes()[:-3])
    with pytest.raises(DataError) as exc:
        IndexedDataset(tmp_path / "d")
    assert str(target) in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_synthetic_corpus_is_deterministic_idempotent_and_learnable(tmp_path: Path) -> None:
    a = build_synthetic_corpus(tmp_path / "a", vocab_size=128, num_documents=60, seed=7)
    b = build_synthetic_corpus(tmp_path / "b", vocab_size=128, num_documents=60, seed=7)
    c = build_synthetic_corpus(tmp_path / "c", vocab_size=128, num_documents=60, seed=8)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert (tmp_path / "a.idx").read_bytes() == (tmp_path / "b.idx").read_bytes()
    assert (tmp_path / "a.bin").read_bytes() != (tmp_path / "c.bin").read_bytes()
    mtime = (tmp_path / "a.bin").stat().st_mtime_ns
    assert build_synthetic_corpus(a, vocab_size=128, num_documents=60, seed=7) == a
    assert (tmp_path / "a.bin").stat().st_mtime_ns == mtime, "identical corpus was rewritten"
    ds = IndexedDataset(a)
    assert len(ds) == 60
    assert all(int(ds[i][-1]) == eod_token(128) for i in range(len(ds)))
    # Learnable: the empirical bigram entropy is far below the uniform entropy.
    toks = np.concatenate([ds[i] for i in range(len(ds))]).astype(np.int64)
    counts = np.zeros((128, 128))
    np.add.at(counts, (toks[:-1], toks[1:]), 1)
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(counts * np.where(p > 0, np.log(p), 0)).sum() / counts.sum()
    assert h < 0.5 * np.log(127), f"bigram entropy {h:.2f} nats is not far below log(127)"
    # A corrupted existing corpus is repaired, not reused.
    (tmp_path / "a.bin").write_bytes(b"\x00" * 10)
    build_synthetic_corpus(a, vocab_size=128, num_documents=60, seed=7)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def _concat_reference(ds: IndexedDataset, seq: int, seed: int, num_samples: int) -> list[list[int]]:
    """Straightforward re-statement of Megatron's GPTDataset index construction."""
    tokens_per_epoch = int(ds.sizes.sum())
    epochs = 1
    while (epochs * tokens_per_epoch - 1) // seq < num_samples:
        epochs += 1
    rng = np.random.RandomState(seed)
    doc_index = np.array(list(range(len(ds))) * epochs, dtype=np.int32)
    rng.shuffle(doc_index)
    stream = np.concatenate([ds[int(d)] for d in doc_index]).tolist()
    total = (len(stream) - 1) // seq
    order = np.arange(total)
    rng.shuffle(order)
    return [stream[j * seq : j * seq + seq + 1] for j in order[:num_samples]]


def test_gpt_samples_follow_megatron_order_across_epochs(tmp_path: Path) -> None:
    prefix = build_synthetic_corpus(tmp_path / "s", vocab_size=64, num_documents=5, seed=1)
    ds = IndexedDataset(prefix)
    seq, num = 37, int(ds.sizes.sum()) // 37 * 2 + 3  # needs three epochs
    samples = GPTSamples(ds, seq_length=seq, seed=11, num_samples=num)
    assert samples.num_epochs == 3 and len(samples) == num
    ref = _concat_reference(ds, seq, 11, num)
    for i in range(num):
        item = samples[i]
        assert item["tokens"].dtype == torch.long and item["loss_mask"].dtype == torch.float32
        assert item["tokens"].tolist() == ref[i][:-1]
        assert item["labels"].tolist() == ref[i][1:]
        assert item["loss_mask"].shape == (seq,) and bool((item["loss_mask"] == 1).all())
    with pytest.raises(IndexError):
        samples[num]


def test_micro_batch_iterator_megatron_sampler_order_and_resume(tmp_path: Path) -> None:
    prefix = build_synthetic_corpus(tmp_path / "s", vocab_size=64, num_documents=40, seed=2)
    samples = GPTSamples(IndexedDataset(prefix), seq_length=8, seed=3, num_samples=48)
    mbs, gbs, dp = 2, 8, 2
    per_rank = [MicroBatchIterator(samples, micro_batch_size=mbs, global_batch_size=gbs, dp_rank=r, dp_size=dp)
                for r in range(dp)]
    assert per_rank[0].num_microbatches == 2
    for it_ in range(3):
        batches = [it.next_global_batch() for it in per_rank]
        for r in range(dp):
            assert len(batches[r]) == 2
            for m, b in enumerate(batches[r]):
                assert b["tokens"].shape == (mbs, 8)
                first = it_ * gbs + m * mbs * dp + r * mbs
                expect = torch.stack([samples[first]["tokens"], samples[first + 1]["tokens"]])
                assert torch.equal(b["tokens"], expect)
    state = per_rank[1].state_dict()
    assert state == {"consumed_samples": 24}
    resumed = MicroBatchIterator(samples, micro_batch_size=mbs, global_batch_size=gbs, dp_rank=1, dp_size=dp)
    resumed.load_state_dict(state)
    a, b = per_rank[1].next_global_batch(), resumed.next_global_batch()
    assert all(torch.equal(x["tokens"], y["tokens"]) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="not divisible"):
        MicroBatchIterator(samples, micro_batch_size=3, global_batch_size=8, dp_rank=0, dp_size=2)
