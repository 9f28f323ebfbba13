"""The exported folder's model card (README.md) through huggingface_hub's ``ModelCard``.

Metadata (YAML front matter) carries what the Hub indexes: base model, license, library, tags. The body
records what a reader needs to trust the model: method, source/target/achieved shapes, parameter counts,
tokens seen, final domain weights and, when present, the evaluation table.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

SHAPE_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                "num_hidden_layers", "vocab_size", "tie_word_embeddings")
METHODS = {
    "prune": "targeted structured pruning with learned hard-concrete masks (Sheared-LLaMA), data reweighting: {dro}",
    "cpt": "continued pretraining of a pruned model, data reweighting: {dro}",
    "dress": "DReSS: regularise the selected units towards zero, remove them, finetune",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def source_license(source_dir: Optional[str]) -> Optional[str]:
    """The license of the source model: its card's metadata, else a ``license`` key in its config.json."""
    if not source_dir or not Path(source_dir).is_dir():
        return None
    readme = Path(source_dir) / "README.md"
    if readme.is_file():
        from huggingface_hub import ModelCard

        try:
            lic = ModelCard.load(readme).data.to_dict().get("license")
            if lic:
                return str(lic)
        except Exception:  # a malformed source card must not block the export; it only loses the license
            pass
    cfg = Path(source_dir) / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("license")
    return None


def base_model_id(source: Optional[str]) -> Optional[str]:
    """A Hub repo id for ``base_model`` metadata: the source itself, or its config's ``_name_or_path``."""
    if not source:
        return None
    if not Path(source).exists() and _HUB_ID.match(source):
        return source
    cfg = Path(source) / "config.json"
    if cfg.is_file():
        name = json.loads(cfg.read_text()).get("_name_or_path", "")
        if _HUB_ID.match(name or "") and not Path(name).exists():
            return name
    return None


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


def eval_table(results: dict) -> str:
    """Markdown of an eval.json: megadrp.eval's tables when it has that layout, else a flat metric list."""
    try:
        from megadrp.eval_results import markdown_table

        return markdown_table(results, "bits_per_byte") + "\n" + markdown_table(results, "loss")
    except (ImportError, KeyError, TypeError, AttributeError):
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


def build_model_card(info: dict[str, Any]):
    """A ``ModelCard`` from export facts: see ``megadrp.export.api._card_info`` for the keys."""
    from huggingface_hub import ModelCard, ModelCardData

    base = info.get("base_model")
    data = ModelCardData(license=info.get("license"), library_name="transformers", base_model=base,
                         pipeline_tag="text-generation", tags=["megadrp", "pruned", info.get("family", "llama")])
    method = METHODS.get(info.get("mode", "prune"), "{dro}").format(dro=info.get("dro_method", "none"))
    parts = [f"# {info.get('name', 'megadrp export')}\n",
             f"A dense `{info.get('architecture')}` exported by megadrp from "
             f"`{info.get('source') or base or 'a megadrp checkpoint'}`.\n",
             f"- Method: {method}.",
             f"- Checkpoint step: {info.get('step', '—')}; tokens seen: {info.get('tokens_seen', '—')}.",
             f"- Parameters: {info.get('num_params'):,} (source {info.get('source_num_params'):,})."
             if info.get("num_params") and info.get("source_num_params") else "",
             "- Masks were folded into the weights once (deterministic masks; kept units keep their soft value) "
             "and pruned units were sliced away; loads with stock `AutoModelForCausalLM.from_pretrained`.",
             "" if info.get("tie_word_embeddings", True) or not info.get("source_tied") else
             "- The source tied its LM head to the embedding; the hidden mask scales the embedding but not the "
             "LM head, so this export stores them separately (`tie_word_embeddings: false`).",
             "\n## Shape\n", _shape_table({k: v for k, v in (("source", info.get("source_shape")),
                                                              ("target", info.get("target_shape")),
                                                              ("achieved", info.get("achieved_shape"))) if v})]
    weights = info.get("domain_weights")
    if weights:
        parts += ["\n## Final domain weights\n", "| domain | weight |\n|---|---:|"]
        parts += [f"| {d} | {float(w):.4f} |" for d, w in weights.items()]
    if info.get("eval"):
        table = eval_table(info["eval"])
        if table:
            parts += ["\n## Evaluation\n", table]
    body = "\n".join(p for p in parts if p != "") + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
