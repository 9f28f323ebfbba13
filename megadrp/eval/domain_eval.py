"""Per-domain held-out loss, perplexity and bits per byte, under the one protocol of docs/EVALUATION.md.

``evaluate_domains`` scores one model (a HF folder, an ``nn.Module``/callable returning logits, or a
``forward_fn``); ``evaluate_models`` scores several under the same windows, for one comparison table.
"""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch

from megadrp.eval.windows import Window, make_windows
from megadrp.kernels.cross_entropy import token_cross_entropy

LN2 = math.log(2.0)


def _logits_of(output) -> torch.Tensor:
    # HF models return a ModelOutput, megadrp's MaskedCausalLM a tensor; some callables a tuple.
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}; expected logits [B, T, V] or an object with .logits")


@torch.no_grad()
def score_windows(forward_fn, windows: list[Window], batch_size: int, device) -> tuple[float, int, int]:
    """(total nats, predicted tokens, bytes covered) of ``windows``; windows of equal length share a batch."""
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    by_length: dict[int, list[Window]] = {}
    for w in windows:
        by_length.setdefault(int(w.ids.numel()), []).append(w)
    for group in by_length.values():
        for i in range(0, len(group), batch_size):
            batch = group[i:i + batch_size]
            ids = torch.stack([w.ids for w in batch]).to(device)
            logits = _logits_of(forward_fn(ids))
            nll = token_cross_entropy(logits[:, :-1], ids[:, 1:])
            total_nats += float(nll.double().sum())
            total_tokens += nll.numel()
            total_bytes += sum(w.num_bytes for w in batch)
    return total_nats, total_tokens, total_bytes


def domain_metrics(nats: float, tokens: int, num_bytes: int, num_windows: int) -> dict:
    """The per-domain record: loss (nats/token), perplexity, bits per byte, tokens, bytes, windows."""
    loss = nats / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": nats / (LN2 * num_bytes),
            "tokens": tokens, "bytes": num_bytes, "windows": num_windows}


def summarize(domains: dict[str, dict]) -> tuple[dict, dict]:
    """("average", "worst") over evaluated domains: macro means of loss and bpb; worst by bits per byte."""
    if not domains:
        return {}, {}
    n = len(domains)
    mean_loss = sum(r["loss"] for r in domains.values()) / n
    average = {"loss": mean_loss, "perplexity": math.exp(min(mean_loss, 700.0)),
               "bits_per_byte": sum(r["bits_per_byte"] for r in domains.values()) / n, "num_domains": n}
    name = max(domains, key=lambda d: domains[d]["bits_per_byte"])
    worst = {"domain": name, **{k: domains[name][k] for k in ("loss", "perplexity", "bits_per_byte")}}
    return average, worst


def _as_forward(model, forward_fn):
    if forward_fn is not None:
        return forward_fn
    if callable(model):
        return model
    raise TypeError(f"cannot evaluate {type(model).__name__}: pass a HF folder, a module/callable returning logits, "
                    "or forward_fn")


def _model_device(model, device):
    from megadrp.eval.loading import default_device

    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
        if param is not None:
            return param.device
    return default_device(None)


def evaluate_domains(model_or_path, tokenizer, texts_by_domain: dict[str, list[str]], seq_length: int = 512,
                     max_windows: int = 32, batch_size: int = 4, device=None, forward_fn=None,
                     progress: bool = False) -> dict:
    """Score held-out text per domain.

    ``model_or_path``: a HF folder or megadrp checkpoint (path), an ``nn.Module``/callable mapping
    ``input_ids [B, T]`` to logits ``[B, T, V]`` (or an object with ``.logits``); ``forward_fn``, if given,
    is called instead (e.g. ``lambda ids: masked_model(ids, masks)``). ``tokenizer``: a fast HF tokenizer,
    or None to use the folder's own.
    Returns ``{"domains": {d: {loss, perplexity, bits_per_byte, tokens, bytes, windows}}, "average": {...},
    "worst": {"domain", ...}, "skipped": {d: reason}, "protocol": {...}}``.
    """
    if isinstance(model_or_path, (str, Path)):
        from megadrp.eval.loading import load_hf, resolve_model_dir

        with tempfile.TemporaryDirectory(prefix="megadrp_eval_") as scratch:
            model, own_tok = load_hf(resolve_model_dir(model_or_path, scratch), device=device)
        return evaluate_domains(model, tokenizer or own_tok, texts_by_domain, seq_length, max_windows, batch_size,
                                device, forward_fn, progress)
    if tokenizer is None:
        raise ValueError("a tokenizer is needed when the model is not given as a folder")
    if batch_size < 1 or max_windows < 0:
        raise ValueError(f"batch_size must be >= 1 and max_windows >= 0, got {batch_size}, {max_windows}")
    fn = _as_forward(model_or_path, forward_fn)
    device = _model_device(model_or_path, device)
    was_training = isinstance(model_or_path, torch.nn.Module) and model_or_path.training
    if isinstance(model_or_path, torch.nn.Module):
        model_or_path.eval()
    domains, skipped = {}, {}
    try:
        for name, docs in texts_by_domain.items():
            windows = make_windows(tokenizer, docs, seq_length, max_windows)
            if not windows:
                skipped[name] = (f"no held-out text ({len(docs)} documents)" if not any(docs)
                                 else "too little text for one window (fewer than 2 tokens)")
                print(f"[eval] domain '{name}' skipped: {skipped[name]}", file=sys.stderr)
                continue
            nats, tokens, num_bytes = score_windows(fn, windows, batch_size, device)
            domains[name] = domain_metrics(nats, tokens, num_bytes, len(windows))
            if progress:
                r = domains[name]
                print(f"[eval] {name}: loss {r['loss']:.4f}  bpb {r['bits_per_byte']:.4f}  "
                      f"({tokens} tokens, {len(windows)} windows)", file=sys.stderr)
    finally:
        if was_training:
            model_or_path.train()
    if not domains:
        raise ValueError(f"nothing to evaluate: every domain was empty or absent ({skipped})")
    average, worst = summarize(domains)
    protocol = {"seq_length": seq_length, "max_windows": max_windows, "join": "eos", "bpb_bytes": "utf8-covered"}
    return {"domains": domains, "average": average, "worst": worst, "skipped": skipped, "protocol": protocol}


def evaluate_models(models: dict[str, object], texts_by_domain: dict[str, list[str]], tokenizer=None,
                    **kwargs) -> dict:
    """``{label: evaluate_domains(...)}`` for several models (paths or modules) on the same held-out text.

    Models are loaded one at a time so that only one is in memory. ``tokenizer`` None: each folder's own
    (pruning keeps the vocabulary, so source and pruned model see the same windows).
    """
    return {label: evaluate_domains(model, tokenizer, texts_by_domain, **kwargs) for label, model in models.items()}
