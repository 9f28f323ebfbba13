"""Downstream accuracy through lm-eval-harness (``HFLM`` + ``simple_evaluate``), when it and its task data exist.

Tasks are lm-eval's registered tasks plus those of local task folders (``include_path``: YAML task configs,
lm-eval's ``--include_path``). lm-eval is an optional extra (``pip install '.[eval]'``) and the data of
its registered tasks come from the Hub, which an offline machine may not reach: both cases give a message
in the results instead of an exception, so the per-domain numbers are always written. A task name lm-eval
does not know gets lm-eval's own message (``unknown_task_message``), checked before any model is loaded.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

MISSING = ("lm-eval is not installed: `pip install '.[eval]'` (lm-eval>=0.4.5) to add downstream tasks; "
           "the per-domain results are written without them")
_LIST_HINT = "list the known tasks with `lm-eval ls tasks{}`"


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...]):
    """lm-eval's task index (scans its ~10k task configs once per process: seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) or None)


def _include_hint(include_path) -> str:
    return _LIST_HINT.format(f" --include_path {':'.join(include_path)}" if include_path else "")


def check_include_path(include_path) -> None:
    for folder in include_path or ():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--include-path {folder} is not a folder; give folders of lm-eval task YAML files")


def unknown_task_message(tasks: list[str], include_path=()) -> str | None:
    """lm-eval's message for the first task name it does not know, or None (all known, or lm-eval missing)."""
    if not tasks or not lm_eval_available():
        return None
    manager = _task_manager(tuple(str(p) for p in include_path or ()))
    for name in tasks:
        if manager.match_tasks([name]) or (name.endswith(".yaml") and Path(name).is_file()):
            continue
        try:  # an unknown name fails in lm-eval's loader before any data is read: its message, verbatim
            manager.load([name])
        except KeyError as err:
            return f"lm-eval: {err.args[0] if err.args else err}; {_include_hint(include_path)}"
        except Exception:  # known after all (a spec lm-eval resolves itself): running it will tell
            continue
    return None


def _is_download_error(err: Exception) -> bool:
    module = type(err).__module__.split(".")[0]
    return isinstance(err, ConnectionError) or module in ("huggingface_hub", "requests", "urllib3")


def run_tasks(model, tokenizer, tasks: list[str], batch_size: int = 4, limit: int | None = None,
              include_path=()) -> dict:
    """``{"results": {task: {metric: value}}}``, or ``{"error": message}`` when lm-eval, a task or its data is
    missing."""
    if not tasks:
        return {"results": {}}
    if not lm_eval_available():
        return {"error": MISSING}
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except Exception as err:  # a broken install must not cost the per-domain results
        return {"error": f"lm-eval is installed but could not be imported ({err}); {MISSING}"}
    include_path = tuple(str(p) for p in include_path or ())
    try:
        manager = _task_manager(include_path)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, log_samples=False, task_manager=manager)
    except KeyError as err:  # lm-eval's loader: an unknown task name
        return {"error": f"lm-eval: {err.args[0] if err.args else err}; {_include_hint(include_path)}"}
    except Exception as err:
        if _is_download_error(err):
            return {"error": f"lm-eval could not fetch the data of tasks {list(tasks)}: {type(err).__name__}: {err}. "
                             "Registered tasks download their data from the Hugging Face Hub: run once online (or "
                             "pre-populate HF_DATASETS_CACHE), or use local task folders (--include-path)"}
        return {"error": f"lm-eval could not run tasks {list(tasks)}: {type(err).__name__}: {err}"}
    results = {}
    for task, metrics in (out or {}).get("results", {}).items():
        results[task] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return {"results": results}
