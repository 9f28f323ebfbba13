"""Bad inputs are refused with a message that names the file and the fix (reliability, issue 17 items 9-10).

Each of these used to be accepted silently (an empty dataset, float token ids, an average over fewer domains)
or to fail with a message that named no file (non-UTF-8 text, a config.json that is not JSON, a truncated
weights file); and a launched rank prefixed its errors with `megadrp train:` whatever the mode.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from megadrp.data import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter
from megadrp.data import preprocess as pre
from megadrp.data.readers import InputError
from tests.helpers.model_folders import write_corpus
from tests.helpers.text_data import build_tiny_tokenizer
from tests.helpers.tiny_models import make_tiny_hf_model


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


def test_preprocess_of_empty_input_writes_nothing(tmp_path, tok_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match=r"empty.jsonl: no documents with text to tokenise"):
        pre.preprocess([str(empty)], str(tmp_path / "out"), str(tok_dir))
    assert not list(tmp_path.glob("out*"))


def test_preprocess_names_a_non_utf8_jsonl(tmp_path, tok_dir):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"latin1.jsonl: not UTF-8 text .*iconv"):
        pre.preprocess([str(bad)], str(tmp_path / "out"), str(tok_dir))


def test_float_dtype_code_in_an_index_is_refused(tmp_path):
    prefix = tmp_path / "ds"
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_document([1, 2, 3])
    idx = tmp_path / "ds.idx"
    data = bytearray(idx.read_bytes())
    data[17] = 7  # the dtype code byte (after the 9-byte magic and the u64 version): float32
    idx.write_bytes(bytes(data))
    with pytest.raises(IndexedDatasetError, match=r"ds.idx.*dtype code 7 is float32, not an integer token type"):
        IndexedDataset(prefix)


def test_eval_refuses_a_corpus_missing_a_manifest_domain(tmp_path):
    from megadrp.eval.windows import load_heldout, read_documents

    corpus = write_corpus(tmp_path / "c", {"code": ["x = 1"], "math": ["1 + 1 = 2"]})
    (corpus / "manifest.json").write_text(json.dumps({"domains": {"code": {}, "math": {}, "legal": {}}}))
    with pytest.raises(FileNotFoundError, match=r"lists domain\(s\) \['legal'\].*no legal.jsonl.*--domains"):
        load_heldout(corpus)
    assert set(load_heldout(corpus, ["code", "math"])) == {"code", "math"}  # a named subset is fine
    (corpus / "heldout" / "math.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match=r"math.jsonl: not UTF-8 text"):
        read_documents(corpus / "heldout" / "math.jsonl")


def test_model_folder_errors_name_the_file(tmp_path):
    from megadrp.model import read_shape
    from megadrp.model.lazy_weights import open_hf_weights, read_hf_state_dict

    model = make_tiny_hf_model(tmp_path, "llama", with_tokenizer=False, num_hidden_layers=1)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model.safetensors cannot be read .*truncated or damaged"):
        read_hf_state_dict(model)
    with pytest.raises(ValueError, match=r"model.safetensors cannot be read .*truncated or damaged"):
        open_hf_weights(model)  # the trainer's one-tensor-at-a-time source load
    (model / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        read_shape(model)


def test_a_launched_rank_names_the_mode_in_its_errors(tmp_path, capsys):
    from megadrp import train

    # What each rank runs under the launcher: the mode comes as the override mode=X, not as an argument.
    assert train.run(["--config", str(tmp_path / "missing.yaml"), "mode=prune"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("megadrp prune:") and "missing.yaml" in err
