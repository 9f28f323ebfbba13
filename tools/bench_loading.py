"""Peak host memory of reading a Hugging Face folder's weights: eager (every shard into one dict) vs streamed
(megadrp/model/lazy_weights.py, one tensor at a time), for docs/BENCHMARKS.md.

    python tools/bench_loading.py --model .cache/models/smollm2-135m
    python tools/bench_loading.py --synthetic /tmp/synth      (writes a 4-shard bf16 llama of ~170M params)
    python tools/bench_loading.py --consolidate RUN_DIR/checkpoints/step_N   (export's ZeRO consolidation)

Two cases, each in a fresh process, peak RSS (getrusage) minus the RSS after imports, in GiB:
``read``: the source weights read and handed over tensor by tensor, as rank 0 does under ZeRO-3 (the model
itself is partitioned, so the source copy is the cost); ``load_pretrained``: a whole MaskedCausalLM in fp32
built from the folder (the model's own fp32 weights are part of the peak).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3


def _measure(method: str, case: str, path: str) -> dict:
    import torch

    from megadrp.model import MaskedCausalLM, read_hf_state_dict, read_shape
    from megadrp.model.lazy_weights import open_hf_weights

    shape, family = read_shape(path)
    base = _rss_gib()
    weights = read_hf_state_dict(path) if method == "eager" else open_hf_weights(path)
    internal = family.hf_to_internal(weights)
    if case == "read":
        total = 0
        for name in internal:  # what load_source_weights does on rank 0: one parameter at a time
            total += internal[name].float().sum().item() != 0
    else:
        model = MaskedCausalLM(shape, family, dtype=torch.float32)
        with torch.no_grad():
            for k, t in model.state_dict().items():
                t.copy_(internal[k])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2 - base
    return {"method": method, "case": case, "params": shape.num_params(), "peak_gib": round(peak, 3),
            "fp32_model_gib": round(shape.num_params() * 4 / 1024 ** 3, 3)}


def _status_mib() -> dict:
    with open("/proc/self/status") as fh:
        return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in fh)
                if k in ("RssAnon", "RssFile")}


def consolidation_peak(ckpt: str) -> dict:
    """Peak anonymous and file-backed resident memory of megadrp.export's consolidation, sampled every 5 ms."""
    import threading
    import time

    from megadrp.export.consolidate import consolidate

    base, peak, done = _status_mib(), _status_mib(), threading.Event()

    def sample():
        while not done.is_set():
            for k, v in _status_mib().items():
                peak[k] = max(peak[k], v)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    sd = consolidate(Path(ckpt))
    done.set()
    thread.join()
    unique = {t.data_ptr(): t.numel() for t in sd.values()}  # a tied LM head shares the embedding
    return {"params": sum(unique.values()), "fp32_copy_mib": round(sum(unique.values()) * 4 / 2 ** 20),
            **{f"{k}_peak_mib": round(peak[k] - base[k]) for k in base}}


def write_synthetic(out: Path, shards: int = 4) -> Path:
    """A random bf16 llama (d 1024, 8 layers, m 4096, vocab 16000) in `shards` safetensors files + index."""
    import torch
    from safetensors.torch import save_file

    from megadrp.model import ModelShape, get_family

    shape = ModelShape(vocab_size=16000, hidden_size=1024, num_attention_heads=16, num_key_value_heads=16,
                       head_dim=64, intermediate_size=4096, num_hidden_layers=8, max_position_embeddings=2048)
    family = get_family("llama")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(shape.to_hf_config_dict(family)))
    from megadrp.model import MaskedCausalLM

    model = MaskedCausalLM(shape, family, dtype=torch.bfloat16)
    hf = family.internal_to_hf({k: v.detach() for k, v in model.state_dict().items()}, tie_word_embeddings=False)
    keys = list(hf)
    weight_map = {}
    for i in range(shards):
        part = keys[i::shards]
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: hf[k].contiguous() for k in part}, str(out / name))
        weight_map.update({k: name for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a Hugging Face folder")
    ap.add_argument("--synthetic", type=Path, help="write the synthetic multi-shard model here and measure it")
    ap.add_argument("--consolidate", help="a checkpoint folder: peak memory of export's consolidation")
    ap.add_argument("--measure", nargs=3, metavar=("METHOD", "CASE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return 0
    if args.consolidate:
        print(json.dumps(consolidation_peak(args.consolidate)))
        return 0
    path = str(write_synthetic(args.synthetic)) if args.synthetic else args.model
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for case in ("read", "load_pretrained"):
        for method in ("eager", "lazy"):
            out = subprocess.run([sys.executable, __file__, "--measure", method, case, path], env=env,
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
