"""One held-out protocol: the trainer's periodic evaluation and `megadrp eval` report the same numbers.

The trainer reads token ids from the tokenised held-out split (no text), `megadrp eval` tokenises the text
itself and counts bytes from character offsets; on the same token stream, with the trainer's windows of
seq_length + 1 tokens and eval's seq_length = seq_length + 1, both give the same loss and bits per byte.
"""
from __future__ import annotations

import numpy as np
import pytest

from megadrp.data import IndexedDataset, IndexedDatasetWriter
from megadrp.eval.domain_eval import evaluate_domains
from megadrp.eval.windows import build_stream, ids_bytes, token_byte_strings
from megadrp.trainer.periodic_eval import HeldoutEval
from tests.helpers.model_folders import MULTI, TEXTS, build_model_folder

SEQ = 15  # the trainer's data.seq_length: windows of 16 tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("protocol_model")
    model, tok = build_model_folder(folder)
    return folder, model, tok


def _bin_of(stream, prefix) -> IndexedDataset:
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_document(stream.numpy())
    return IndexedDataset(prefix)


def test_trainer_eval_and_megadrp_eval_agree_on_the_same_windows(tiny, tmp_path):
    folder, model, tok = tiny
    docs = {"prose": TEXTS["prose"] * 2, "code": TEXTS["code"] * 3, "multi": [MULTI] * 3}
    datasets = {d: _bin_of(build_stream(tok, texts)[0], tmp_path / d) for d, texts in docs.items()}
    trainer_eval = HeldoutEval(datasets, SEQ, micro_batch_size=2, num_batches=2, tokenizer_path=str(folder))
    got = trainer_eval.run(model, None, "cpu")  # an HF module: forward(ids, None) ignores the masks slot
    want = evaluate_domains(model, tok, docs, seq_length=SEQ + 1, max_windows=4)["domains"]
    for d in docs:
        assert want[d]["windows"] == 4
        assert got["eval_loss"][d] == pytest.approx(want[d]["loss"], rel=1e-12)
        assert got["eval_bpb"][d] == pytest.approx(want[d]["bits_per_byte"], rel=1e-12)


def test_bytes_from_ids_equal_bytes_from_offsets(tiny):
    """The per-token bytes the trainer computes from ids alone are eval's offset-based ones, multi-byte
    characters split across tokens included; EOS covers none."""
    _, _, tok = tiny
    ids, nbytes = build_stream(tok, TEXTS["prose"] + [MULTI, MULTI[::-1]] + TEXTS["code"])
    got = ids_bytes(token_byte_strings(tok), ids, tok.eos_token_id)
    np.testing.assert_array_equal(got, nbytes.numpy())
    assert got[ids.numpy() == tok.eos_token_id].sum() == 0
