"""Downstream accuracy through lm-eval-harness (``HFLM`` + ``simple_evaluate``), when it and its task data exist.

lm-eval is an optional extra (``pip install '.[eval]'``) and its task data come from the Hub, which an
offline machine may not reach: both cases give a message in the results instead of an exception, so the
per-domain numbers are always written.
"""
from __future__ import annotations

import importlib.util

MISSING = ("lm-eval is not installed: `pip install '.[eval]'` (lm-eval>=0.4.5) to add downstream tasks; "
           "the per-domain results are written without them")


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def run_tasks(model, tokenizer, tasks: list[str], batch_size: int = 4, limit: int | None = None) -> dict:
    """``{"results": {task: {metric: value}}}``, or ``{"error": message}`` when lm-eval or a task's data is missing."""
    if not tasks:
        return {"results": {}}
    if not lm_eval_available():
        return {"error": MISSING}
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except Exception as err:  # a broken install must not cost the per-domain results
        return {"error": f"lm-eval is installed but could not be imported ({err}); {MISSING}"}
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, log_samples=False)
    except Exception as err:  # offline Hub, unknown task name, dataset not cached
        return {"error": f"lm-eval could not run tasks {list(tasks)}: {type(err).__name__}: {err}. Its task data are "
                         "downloaded from the Hugging Face Hub: run once online (or pre-populate HF_DATASETS_CACHE) "
                         "and check the task names with `lm_eval --tasks list`"}
    results = {}
    for task, metrics in (out or {}).get("results", {}).items():
        results[task] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return {"results": results}
