"""Domain-mixture sampler: follows its weights, resumes exactly, ranks agree and read disjoint data."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from megadrp.data import DomainMixtureSampler, IndexedDataset, IndexedDatasetWriter, PackedDomain


def make_domains(tmp_path, sizes=(3000, 5000, 2000)):
    """Domain d holds ids d*10000 + running position, so every token says where it came from."""
    rng = np.random.default_rng(0)
    out = {}
    for d, total in enumerate(sizes):
        prefix = tmp_path / f"train_d{d}"
        with IndexedDatasetWriter(prefix, np.int32) as w:
            pos = 0
            while pos < total:
                n = int(min(rng.integers(1, 120), total - pos))
                w.add_document(d * 10000 + np.arange(pos, pos + n))
                pos += n
        out[f"d{d}"] = IndexedDataset(prefix)
    return out


def test_packed_domain_epoch_covers_stream_once(tmp_path):
    ds = make_domains(tmp_path, sizes=(1001,))["d0"]
    packed = PackedDomain(ds, seq_length=10, seed=3, domain_index=0)
    assert packed.sequences_per_epoch == 100
    seqs = [packed.get(k) for k in range(100)]
    # Inputs (first T tokens) of one epoch cover 1000 distinct tokens: each window once, no overlap.
    inputs = np.concatenate([s[:-1] for s in seqs])
    assert len(np.unique(inputs)) == 1000
    # Inside a document the ids run consecutively: a window crossing documents is the shuffled stream's order.
    assert all(len(s) == 11 for s in seqs)
    # The next epoch is a reshuffle, not a repeat.
    again = [packed.get(100 + k) for k in range(100)]
    assert not all(np.array_equal(a, b) for a, b in zip(seqs, again))
    assert len(np.unique(np.concatenate([s[:-1] for s in again]))) == 1000


def test_follows_weights_and_set_weights(tmp_path):
    sampler = DomainMixtureSampler(make_domains(tmp_path), seq_length=8, micro_batch_size=16, seed=1,
                                   weights=[0.6, 0.3, 0.1])
    ids = np.concatenate([sampler.next_batch()["domain_ids"].numpy() for _ in range(200)])
    freq = np.bincount(ids, minlength=3) / len(ids)
    np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.03)
    sampler.set_weights({"d0": 0.0, "d1": 0.0, "d2": 1.0})
    batch = sampler.next_batch()
    assert batch["domain_ids"].tolist() == [2] * 16
    # Every token of a sequence comes from the domain the batch says it came from.
    assert np.all(batch["tokens"].numpy() // 10000 == 2)
    assert batch["tokens"].shape == (16, 9) and batch["tokens"].dtype.is_floating_point is False


def test_default_weights_are_natural_ratio(tmp_path):
    sampler = DomainMixtureSampler(make_domains(tmp_path), seq_length=8, micro_batch_size=2)
    np.testing.assert_allclose(sampler.weights, np.array([3000, 5000, 2000]) / 10000)


def test_tokens_match_domain_ids(tmp_path):
    sampler = DomainMixtureSampler(make_domains(tmp_path), seq_length=16, micro_batch_size=8, seed=5)
    for _ in range(30):
        b = sampler.next_batch()
        np.testing.assert_array_equal(b["tokens"].numpy() // 10000, b["domain_ids"].numpy()[:, None].repeat(17, 1))


def test_exact_resume_mid_epoch(tmp_path):
    datasets = make_domains(tmp_path)
    a = DomainMixtureSampler(datasets, seq_length=8, micro_batch_size=4, seed=7, weights=[0.2, 0.5, 0.3])
    for _ in range(13):
        a.next_batch()
    a.set_weights([0.5, 0.1, 0.4])
    state = a.state_dict()
    assert all(0 < c < p.sequences_per_epoch for c, p in zip(state["cursors"], a._packed))  # mid-epoch
    expected = [a.next_batch() for _ in range(10)]
    b = DomainMixtureSampler(datasets, seq_length=8, micro_batch_size=4, seed=7)
    b.load_state_dict(state)
    for want, got in zip(expected, (b.next_batch() for _ in range(10))):
        assert want["tokens"].equal(got["tokens"]) and want["domain_ids"].equal(got["domain_ids"])
    assert b.state_dict() == a.state_dict()


def test_two_ranks_agree_and_read_disjoint_sequences(tmp_path):
    datasets = make_domains(tmp_path)
    ranks = [DomainMixtureSampler(datasets, seq_length=8, micro_batch_size=4, seed=11, rank=r, world_size=2,
                                  weights=[0.3, 0.3, 0.4]) for r in range(2)]
    seen = set()
    for _ in range(40):
        b0, b1 = ranks[0].next_batch(), ranks[1].next_batch()
        assert ranks[0].state_dict() == ranks[1].state_dict()  # same cursors: the same global plan
        for b in (b0, b1):
            for row in b["tokens"].numpy():
                key = tuple(row.tolist())
                assert key not in seen, "two slots read the same sequence"
                seen.add(key)
    # The union of both ranks is exactly what a single rank with the doubled batch reads.
    single = DomainMixtureSampler(datasets, seq_length=8, micro_batch_size=8, seed=11, weights=[0.3, 0.3, 0.4])
    rows = {tuple(r.tolist()) for _ in range(40) for r in single.next_batch()["tokens"].numpy()}
    assert rows == seen


def test_epoch_wrap_warns(tmp_path, caplog):
    datasets = make_domains(tmp_path, sizes=(200, 200))
    sampler = DomainMixtureSampler(datasets, seq_length=10, micro_batch_size=8, seed=0, weights=[1, 0])
    with caplog.at_level(logging.WARNING, logger="megadrp.data.sampler"):
        for _ in range(3):
            sampler.next_batch()
    assert any("'d0' exhausted after 19 sequences per epoch: starting epoch 1" in r.getMessage()
               for r in caplog.records)
    assert sampler.epochs()["d0"] == 1


def test_bad_inputs(tmp_path):
    datasets = make_domains(tmp_path, sizes=(50, 200))
    with pytest.raises(ValueError, match=r"domain 'd0' has 50 tokens, fewer than one sequence"):
        DomainMixtureSampler(datasets, seq_length=64, micro_batch_size=1)
    sampler = DomainMixtureSampler(datasets, seq_length=8, micro_batch_size=1)
    with pytest.raises(ValueError, match="expected 2 weights"):
        sampler.set_weights([1.0])
    with pytest.raises(ValueError, match="finite, >= 0"):
        sampler.set_weights([1.0, -0.5])
    with pytest.raises(ValueError, match="seq_length=8 but this run has 16"):
        DomainMixtureSampler(datasets, seq_length=16, micro_batch_size=1).load_state_dict(sampler.state_dict())
