"""The exported folder's model card (README.md) through huggingface_hub's ``ModelCard``.

Metadata (YAML front matter) carries what the Hub indexes: base model and license (inherited from the source,
megadrp.export.provenance), library, tags. The body records what a reader needs to trust the model: method,
target and achieved shapes, parameter counts, tokens seen, final domain weights, the held-out evaluation
table when one exists, and a plain warning when that table shows the model far below its source
(average bits per byte above ``QUALITY_WARNING_RATIO`` x the source's). ``update_card_evaluation`` rewrites
only the evaluation and warning sections of an existing export's card (``megadrp eval --update-card``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

SHAPE_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                "num_hidden_layers", "vocab_size", "tie_word_embeddings")
# The fields that tell two models' shapes apart in an evaluation (the pruned ones and the vocabulary).
MATCH_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "num_hidden_layers", "vocab_size")
QUALITY_WARNING_RATIO = 1.5
EVAL_HEADING, WARNING_HEADING = "## Evaluation", "## Quality warning"


def _shape_table(shapes: dict[str, Any]) -> str:
    names = list(shapes)
    lines = ["| field | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for f in SHAPE_FIELDS:
        cells = []
        for s in shapes.values():
            v = s.get(f) if isinstance(s, dict) else getattr(s, f, None)
            cells.append("—" if v is None else str(v))
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _models(results: dict) -> dict[str, dict]:
    """``{label: result}`` of an eval JSON (``{"models": ...}``), a label mapping, or one bare result."""
    results = results.get("models", results)
    return {"model": results} if "domains" in results or "tasks" in results else results


def eval_table(results: dict) -> str:
    """Markdown of an eval JSON: megadrp.eval's held-out and lm-eval tables, else a flat metric list."""
    from megadrp.eval_results import markdown_table, protocol_line, speed_table, tasks_table

    try:
        models = _models(results)
        held = {k: v for k, v in models.items() if isinstance(v, dict) and "domains" in v}
        tasks = {k: v["tasks"] for k, v in models.items() if isinstance(v, dict) and v.get("tasks")}
        speed = speed_table(models)
        if held or tasks or speed:
            parts = [protocol_line(held), markdown_table(held, "bits_per_byte"),
                     markdown_table(held, "loss")] if held else []
            parts += ["### Speed and memory\n", speed] if speed else []  # a subsection: the card's ## sections
            return "\n".join(parts + (["lm-eval-harness:\n", tasks_table(tasks)] if tasks else []))
    except (KeyError, TypeError, AttributeError):
        pass
    rows = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {prefix} | {value:.4g} |")

    walk("", results)
    return "| metric | value |\n|---|---:|\n" + "\n".join(rows) if rows else ""


def _find(models: dict[str, dict], shape: Optional[dict]) -> Optional[str]:
    """The label of the first evaluated model whose recorded shape is ``shape``."""
    if not shape:
        return None
    for label, res in models.items():
        got = res.get("shape") if isinstance(res, dict) else None
        if got and all(got.get(f) == shape.get(f) for f in MATCH_FIELDS):
            return label
    return None


def quality_warning(results: dict, source_shape: Optional[dict], achieved_shape: Optional[dict]) -> Optional[str]:
    """A plain warning when the export's average bits/byte exceed QUALITY_WARNING_RATIO x its source's.

    The export and its source are told apart in the evaluation by their recorded shapes (megadrp eval writes
    each model's shape), so the labels do not matter; with no source in the table there is no warning.
    """
    if not source_shape or not achieved_shape or all(source_shape.get(f) == achieved_shape.get(f)
                                                      for f in MATCH_FIELDS):
        return None
    models = _models(results)
    src, mine = _find(models, source_shape), _find(models, achieved_shape)
    try:
        ours = float(models[mine]["average"]["bits_per_byte"])
        theirs = float(models[src]["average"]["bits_per_byte"])
    except (KeyError, TypeError, ValueError):
        return None
    if theirs <= 0 or ours <= QUALITY_WARNING_RATIO * theirs:
        return None
    return (f"**This model is far below its source**: its held-out average is {ours:.3f} bits per byte against "
            f"the source's {theirs:.3f} ({ours / theirs:.2f}x; above {QUALITY_WARNING_RATIO}x). It is a pruning "
            f"result, not a usable replacement for the source: train it further (e.g. `megadrp cpt`) before "
            f"relying on its output.")


def _set_section(text: str, heading: str, content: Optional[str], before: Optional[str] = None) -> str:
    """``text`` with the ``heading`` section replaced by ``content`` (removed when None), or inserted before the
    ``before`` heading (else appended) when it is not there yet."""
    start = text.find(f"\n{heading}\n")
    if start >= 0:
        end = text.find("\n## ", start + len(heading) + 2)
        text = text[:start] + (text[end:] if end >= 0 else "\n")
    if content is None:
        return text
    section = f"\n{heading}\n\n{content.strip()}\n"
    at = text.find(f"\n{before}") if before else -1
    return text[:at] + section + text[at:] if at >= 0 else text.rstrip("\n") + "\n" + section


def with_evaluation(text: str, results: Optional[dict], source_shape=None, achieved_shape=None) -> str:
    """Card text with its evaluation and quality-warning sections made from ``results``."""
    table = eval_table(results) if results else ""
    text = _set_section(text, EVAL_HEADING, table or None)
    warning = quality_warning(results, source_shape, achieved_shape) if results else None
    return _set_section(text, WARNING_HEADING, warning, before="## Shape")


def _method_lines(info: dict) -> list[str]:
    # the method's own sentence (megadrp.methods' spec), recorded in the checkpoint or passed by the cut itself
    method = info.get("method") or (f"megadrp {info.get('mode', 'run')}, data reweighting: "  # not recorded
                                    f"{info.get('dro_method') or 'none'}")
    lines = [f"- Method: {method}."]
    distill = info.get("distill") or {}
    if float(distill.get("alpha") or 0) > 0:
        # the folder name only: a card never carries a local path
        teacher = Path(str(distill.get("teacher") or "")).name or "the unmasked source"
        lines.append(f"- Distilled from `{teacher}`: loss = {1 - float(distill['alpha']):g} x LM + "
                     f"{float(distill['alpha']):g} x KL(teacher || student) at temperature "
                     f"{float(distill.get('temperature') or 1):g}.")
    target, src = info.get("target_shape"), info.get("source_shape") or {}
    if target:
        lines.append("- Target shape: " + ", ".join(f"{k} {target[k]} (source {src.get(k, '—')})"
                                                    for k in target if target[k] != src.get(k)) + ".")
    n, n_src = info.get("non_embedding_params"), info.get("source_non_embedding_params")
    if n and n_src and not (info.get("origin_non_embedding_params") and n == n_src):  # a recovered cut: said below
        lines.append(f"- Non-embedding parameters: {n:,} of the source's {n_src:,} ({n / n_src:.1%}).")
    n_origin = info.get("origin_non_embedding_params")
    if n and n_origin:
        lines.append(f"- The source is itself a megadrp export, cut from `{info.get('base_model')}`: {n:,} of that "
                     f"model's {n_origin:,} non-embedding parameters ({n / n_origin:.1%}).")
    return lines


STAGES = {
    "oneshot": "One-shot cut by {criterion} importance on {calibration_tokens} calibration tokens, no training",
    "prune": "Learned hard-concrete masks for {step} steps ({tokens_seen} tokens), domain reweighting {dro_method}; "
             "masks folded, pruned units sliced away",
    "dress": "DReSS: the selected units regularised towards zero for {step} steps ({tokens_seen} tokens), then "
             "removed",
    "cpt": "Recovery: continued pretraining for {step} steps ({tokens_seen} tokens), domain reweighting {dro_method}",
}


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n if n is not None else "—")


def model_name(info: dict[str, Any]) -> str:
    """The card's title: an explicit name, else BASE-pruned-RATIOx (non-embedding parameters against the model
    the lineage began with)."""
    if info.get("name"):
        return str(info["name"])
    base = str(info.get("base_model") or "model").rstrip("/").split("/")[-1]
    n, n0 = info.get("non_embedding_params"), info.get("origin_non_embedding_params") or \
        info.get("source_non_embedding_params")
    return f"{base}-pruned-{n / n0:.2f}x" if n and n0 and n != n0 else f"{base}-megadrp"


def _lead(info: dict[str, Any], name: str) -> list[str]:
    """What the model is, against the original source, and how it was made, stage by stage."""
    base = info.get("base_model") or "its source"
    n = info.get("non_embedding_params")
    n0 = info.get("origin_non_embedding_params") or info.get("source_non_embedding_params")
    total, total0 = info.get("num_params"), info.get("origin_num_params") or info.get("source_num_params")
    lines = [f"# {name}\n"]
    size = (f" It keeps {n / 1e6:.1f}M of `{base}`'s {n0 / 1e6:.1f}M non-embedding parameters ({n / n0:.2f}x); "
            f"{total / 1e6:.1f}M parameters in all against {total0 / 1e6:.1f}M." if n and n0 and total and total0
            else "")
    lines.append(f"A structurally pruned `{base}`, made with megadrp: a dense `{info.get('architecture')}` that "
                 f"stock `transformers` loads, no remote code.{size}\n")
    stages = info.get("pipeline") or []
    if stages:
        lines.append("## How it was made\n")
        for i, st in enumerate(stages, 1):
            fields = {k: _count(st.get(k)) for k in ("step", "tokens_seen", "calibration_tokens")}
            fields.update(criterion=st.get("criterion") or "activation", dro_method=st.get("dro_method") or "none")
            text = STAGES.get(st.get("mode"), st.get("mode") or "?").format(**fields)
            if st.get("distill_alpha"):
                text += f", distilled from `{st.get('teacher') or 'the source'}` (KD weight {st['distill_alpha']:g})"
            if st.get("non_embedding_params"):
                text += f" -> {st['non_embedding_params'] / 1e6:.1f}M non-embedding parameters"
            lines.append(f"{i}. {text}.")
        command = info.get("command") or next((st.get("command") for st in stages if st.get("command")), None)
        if command:
            lines.append(f"\nCommand: `{command}`")
        lines.append("")
    return lines


def _usage(name: str) -> str:
    return ("\n## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"tok = AutoTokenizer.from_pretrained(\"{name}\")  # or this folder\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{name}\")\n"
            "out = model.generate(**tok(\"def fibonacci(n):\", return_tensors=\"pt\"), max_new_tokens=32)\n"
            "print(tok.decode(out[0]))\n```\n")


def build_model_card(info: dict[str, Any]):
    """A ``ModelCard`` from export facts (the ``info`` dict megadrp.export.api.export_from_model assembles)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = info.get("base_model")
    lic = dict(info.get("license") or {}) if isinstance(info.get("license"), dict) else \
        ({"license": info["license"]} if info.get("license") else {})
    data = ModelCardData(library_name="transformers", base_model=base, pipeline_tag="text-generation",
                         tags=["megadrp", "pruned", info.get("family", "llama")], **lic)
    name = model_name(info)
    parts = [*_lead(info, name), "\n## Details\n",
             f"Exported by megadrp from `{base or 'a megadrp checkpoint'}`.\n",
             *_method_lines(info),
             f"- Checkpoint step: {info.get('step', '—')}; tokens seen: {info.get('tokens_seen', '—')}."
             if info.get("step") is not None or info.get("tokens_seen") is not None else "",  # a one-shot cut: none
             f"- Parameters: {info.get('num_params'):,} (source {info.get('source_num_params'):,})."
             if info.get("num_params") and info.get("source_num_params") else "",
             "- Pruned units were sliced away; loads with stock `AutoModelForCausalLM.from_pretrained`."
             if info.get("selected_units") else
             "- Masks were folded into the weights once (deterministic masks; kept units keep their soft value) "
             "and pruned units were sliced away; loads with stock `AutoModelForCausalLM.from_pretrained`."
             if info.get("masks_folded") else
             "- The dense weights as trained; loads with stock `AutoModelForCausalLM.from_pretrained`.",
             "" if info.get("tie_word_embeddings", True) or not info.get("source_tied") else
             "- The source tied its LM head to the embedding; the hidden mask scales the embedding but not the "
             "LM head, so this export stores them separately (`tie_word_embeddings: false`).",
             "" if not base or info.get("base_model_is_hub_id") else
             f"- `base_model: {base}` is the source folder's name, not a Hub id (none was found in its "
             "README or config): set it to the source's Hub id before publishing.",
             "\n## Shape\n", _shape_table({k: v for k, v in (("original", info.get("origin_shape")),
                                                              ("source", info.get("source_shape")),
                                                              ("target", info.get("target_shape")),
                                                              ("achieved", info.get("achieved_shape"))) if v})]
    weights = info.get("domain_weights")
    if weights:
        parts += ["\n## Final domain weights\n", "| domain | weight |\n|---|---:|"]
        parts += [f"| {d} | {float(w):.4f} |" for d, w in weights.items()]
    body = "\n".join(p for p in parts if p != "") + "\n" + _usage(name)
    body = with_evaluation(body, info.get("eval"), info.get("source_shape"), info.get("achieved_shape"))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def update_card_evaluation(folder, results: dict) -> Path:
    """Rewrite the evaluation and warning sections of a megadrp export's README.md from ``results`` (atomic)."""
    folder = Path(folder)
    meta_file, readme = folder / "megadrp_export.json", folder / "README.md"
    if not meta_file.is_file() or not readme.is_file():
        raise FileNotFoundError(f"{folder} is not a megadrp export (no megadrp_export.json or README.md): "
                                f"--update-card writes only into folders `megadrp export` made")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    text = with_evaluation(readme.read_text(encoding="utf-8"), results, meta.get("source_shape"),
                           meta.get("achieved_shape"))
    tmp = readme.with_name(f".{readme.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, readme)
    return readme
