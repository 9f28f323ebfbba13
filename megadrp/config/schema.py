"""The typed run-configuration tree of megadrp.

One dataclass per concern (model, pruning, data, dro, optim, deepspeed, checkpoint, logging, export,
eval, dress, distill, stages). Every field carries its help text in ``metadata["help"]`` (shown by ``megadrp config``)
and, where the values are a closed set, ``metadata["choices"]``. Checks that involve only one section
live in that section's ``check`` method and raise :class:`ConfigError` naming the dotted field, the bad
value and what is allowed. Checks that need the source model (target shape vs source shape) live with
the model code, which knows the source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(ValueError):
    """A run-configuration problem: names the field, the bad value and what is allowed."""

    def __init__(self, field_path: str, value: Any, allowed: str):
        self.field_path, self.value, self.allowed = field_path, value, allowed
        super().__init__(f"config field '{field_path}' = {value!r} is invalid: {allowed}")


def opt(default: Any, help: str, choices: Optional[tuple] = None, factory=None):
    """A dataclass field with its documentation (and closed set of values, if any)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _positive(path: str, value, allow_zero: bool = False):
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(path, value, "must be > 0" if not allow_zero else "must be >= 0")


def _fraction(path: str, value, closed_top: bool = True):
    if not (0.0 <= value <= 1.0) or (not closed_top and value == 1.0):
        raise ConfigError(path, value, "must be a fraction in [0, 1]" if closed_top else "must be in [0, 1)")


@dataclass
class ModelConfig:
    path: str = opt("", "Source model: a Hugging Face folder (config.json + safetensors or .bin) to prune or train.")
    family: str = opt("auto", "Model family; 'auto' reads it from the folder's config.json model_type.",
                      choices=("auto", "llama", "mistral", "qwen2"))
    attn_backend: str = opt("auto", "Attention core: 'auto' or 'sdpa' (torch's scaled_dot_product_attention, which "
                            "runs its FlashAttention-2 kernel on CUDA), or 'eager' (reference math). There is no "
                            "separate flash-attn backend (docs/TRAINING.md, Speed).", choices=("auto", "sdpa", "eager"))
    use_kernels: str = opt("auto", "Masked ops: 'auto' (Triton on CUDA, PyTorch reference elsewhere), 'triton', "
                           "'torch'.", choices=("auto", "triton", "torch"))
    activation_checkpointing: bool = opt(False, "Recompute each decoder layer in backward to save activation memory.")
    compile: bool = opt(False, "torch.compile each decoder layer (one compiled graph shared by all layers): fewer, "
                        "fused kernels for the masked element-wise ops, at a compile of tens of seconds at start-up. "
                        "Pair it with use_kernels: torch so the compiler sees plain ops; not under ZeRO-3 (its "
                        "per-module hooks). Measured against eager by tools/bench_train.py (docs/BENCHMARKS.md).")
    fused_cross_entropy: bool = opt(
        True, "Compute the LM head and the per-token CE together, chunk by chunk of tokens, never materialising the "
        "[tokens, vocab] fp32 logits (megadrp/kernels/cross_entropy.py); off computes the logits, then the CE.")

    def check(self, prefix: str = "model"):
        pass


@dataclass
class TargetShape:
    hidden_size: Optional[int] = opt(None, "Target residual width d'; null keeps the source's.")
    num_attention_heads: Optional[int] = opt(None, "Target query heads H'; null keeps the source's.")
    num_key_value_heads: Optional[int] = opt(
        None, "Target key/value heads G'; null keeps the source's (or H' for MHA).")
    intermediate_size: Optional[int] = opt(None, "Target FFN width m'; null keeps the source's.")
    num_hidden_layers: Optional[int] = opt(None, "Target number of decoder layers L'; null keeps the source's.")

    def check(self, prefix: str = "pruning.target"):
        for name in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                     "num_hidden_layers"):
            _positive(f"{prefix}.{name}", getattr(self, name))
        h, g = self.num_attention_heads, self.num_key_value_heads
        if h is not None and g is not None and h % g != 0:
            raise ConfigError(f"{prefix}.num_attention_heads", h,
                              f"must be a multiple of num_key_value_heads ({g}) "
                              "so every KV group keeps as many query heads")


@dataclass
class PruningConfig:
    target: TargetShape = opt(None, "The shape the model is pruned to (HF config names).", factory=TargetShape)
    warmup_fraction: float = opt(0.2, "Fraction of pruning steps over which the target sparsity ramps linearly from 0.")
    log_alpha_init: float = opt(5.0, "Initial mean of each mask's log_alpha (5.0: every unit starts kept).")
    temperature: float = opt(2.0 / 3.0, "Hard-concrete temperature beta.")
    lr_log_alpha: float = opt(1.0, "Learning rate of the mask parameters (log_alpha).")
    lr_lambda: float = opt(1.0, "Learning rate of the Lagrange multipliers (gradient ascent).")
    protect_massive_dims: float = opt(
        10.0, "Never mask hidden dims whose residual-stream RMS on a calibration batch exceeds this multiple of "
        "the median (massive activations; 0 disables). See megadrp/masks/outliers.py.")
    controller: str = opt(
        "tracking", "How expected sparsity follows its target: 'tracking' (exact per-step projection, lambda1 "
        "prices units; meets the target in runs of any length) or 'reference' (Sheared-LLaMA's Lagrangian "
        "dynamics, overshoots in short runs). See megadrp/masks/controller.py.", choices=("tracking", "reference"))
    side_lr_schedule: str = opt(
        "weights", "LR schedule of the mask and multiplier groups: 'weights' (the weights' warm-up + cosine, as "
        "the reference) or 'constant'.", choices=("weights", "constant"))

    def check(self, prefix: str = "pruning"):
        self.target.check(f"{prefix}.target")
        _fraction(f"{prefix}.warmup_fraction", self.warmup_fraction)
        _positive(f"{prefix}.temperature", self.temperature)
        _positive(f"{prefix}.lr_log_alpha", self.lr_log_alpha, allow_zero=True)
        _positive(f"{prefix}.lr_lambda", self.lr_lambda, allow_zero=True)
        _positive(f"{prefix}.protect_massive_dims", self.protect_massive_dims, allow_zero=True)


@dataclass
class DataConfig:
    prefix: str = opt("", "Prefix of the training binaries: PREFIX_<domain>.bin/.idx for each domain.")
    eval_prefix: str = opt("", "Prefix of the held-out binaries (same domains); empty disables held-out eval.")
    domains: list = opt(None, "Domain names, in the order of every per-domain vector.", factory=list)
    seq_length: int = opt(512, "Tokens per training sequence (packed across documents).")
    tokenizer: str = opt("", "Tokenizer folder or name; empty uses model.path. Checked against the data's vocabulary.")

    def check(self, prefix: str = "data"):
        _positive(f"{prefix}.seq_length", self.seq_length)
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"{prefix}.domains", self.domains, "domain names must be unique")


@dataclass
class DroConfig:
    method: str = opt("drpruning", "Domain reweighting rule.", choices=("constant", "sheared", "drpruning"))
    update_interval: int = opt(50, "Steps between domain-weight updates.")
    initial_ratio: str = opt("natural", "Initial (reference) data ratio: 'natural' (proportional to tokens), "
                             "'uniform', or 'temperature' (tokens^temperature).",
                             choices=("natural", "uniform", "temperature"))
    temperature: float = opt(0.3, "Exponent of temperature sampling when initial_ratio = 'temperature'.")
    reference_losses: list = opt(None, "Per-domain reference losses; empty measures the source model's loss at start.",
                                 factory=list)
    reference_model: str = opt("", "HF folder whose held-out loss per domain is the initial reference when "
                               "reference_losses is empty: the source. Empty: model.path in prune/dress mode, the "
                               "frozen distillation teacher in cpt mode (else the cut model itself, with a warning).")
    family_params: list = opt(None, "Parameter counts of >= 3 models of the source's family, for initial "
                              "reference losses fitted over sizes (megadrp/dro/family_reference.py).", factory=list)
    family_losses: list = opt(None, "Per model of family_params, one held-out loss per domain (data.domains order).",
                              factory=list)
    rho: float = opt(0.1, "Radius of the chi-square ball around the reference ratio (DRPruning).")
    min_ratio: float = opt(0.2, "Floor on q_i / p_i (DRPruning's likelihood-ratio floor).")
    ema: float = opt(0.1, "EMA factor of the per-domain training loss (DRPruning).")
    signal: str = opt("train", "The per-domain loss DRPruning's excess is measured on: 'train' (the per-step EMA "
                      "of each domain's training loss, the paper's) or 'heldout' (the held-out loss on the same "
                      "fixed windows at every update, as Sheared-LLaMA's rule: no sampling noise, for one "
                      "evaluation of logging.eval_batches batches per domain at each update).",
                      choices=("train", "heldout"))
    dynamic_reference_loss: bool = opt(
        True, "Fit l(D, s) = A D^-a s^-b + E and lower the references to its prediction.")
    dynamic_ratio: bool = opt(
        True, "Move the reference ratio towards the DRO weights (EMA 0.1, clamped to [p0/2, 2p0]).")
    sheared_smoothing: float = opt(1e-4, "Uniform smoothing c of Sheared-LLaMA's rule: (1-c) w + c/k.")
    fit_in_background: bool = opt(True, "Run the reference-loss fit in a background thread launched at one update and "
                                  "consumed at the next (same result as in the foreground, off the step path).")

    def check(self, prefix: str = "dro"):
        _positive(f"{prefix}.update_interval", self.update_interval)
        _positive(f"{prefix}.rho", self.rho)
        _fraction(f"{prefix}.min_ratio", self.min_ratio, closed_top=False)
        _fraction(f"{prefix}.ema", self.ema)
        _fraction(f"{prefix}.sheared_smoothing", self.sheared_smoothing)
        _positive(f"{prefix}.temperature", self.temperature)


@dataclass
class OptimConfig:
    max_steps: int = opt(1000, "Optimizer steps of the run.")
    micro_batch_size: int = opt(1, "Sequences per rank per micro-batch.")
    gradient_accumulation_steps: int = opt(1, "Micro-batches accumulated per optimizer step.")
    global_batch_size: Optional[int] = opt(None, "If set, must equal micro x accumulation x data-parallel size.")
    lr: float = opt(1e-4, "Peak learning rate of the model weights.")
    min_lr_ratio: float = opt(0.1, "Cosine schedule floor as a fraction of the peak.")
    warmup_steps: int = opt(0, "Linear LR warm-up steps before the cosine decay.")
    weight_decay: float = opt(0.0, "AdamW weight decay of the model weights.")
    beta1: float = opt(0.9, "AdamW beta1.")
    beta2: float = opt(0.95, "AdamW beta2.")
    grad_clip: float = opt(1.0, "Global gradient-norm clip (0 disables).")
    seed: int = opt(1234, "Seed of weights init, data order and mask sampling.")
    spike_guard: str = opt("stop", "A step whose LM loss exceeds spike_factor x max(median of the last spike_window "
                           "steps, 1): 'stop' (exit 3, like NaN), 'skip' (the step leaves the weights unchanged) or "
                           "'off'. megadrp/trainer/spike_guard.py.", choices=("stop", "skip", "off"))
    spike_factor: float = opt(5.0, "How many times the running median LM loss counts as a spike (> 1).")
    spike_window: int = opt(20, "Accepted steps in the spike guard's running median.")

    def check(self, prefix: str = "optim"):
        for name in ("max_steps", "micro_batch_size", "gradient_accumulation_steps", "global_batch_size", "lr"):
            _positive(f"{prefix}.{name}", getattr(self, name))
        _positive(f"{prefix}.warmup_steps", self.warmup_steps, allow_zero=True)
        _positive(f"{prefix}.grad_clip", self.grad_clip, allow_zero=True)
        _fraction(f"{prefix}.min_lr_ratio", self.min_lr_ratio)
        _fraction(f"{prefix}.beta1", self.beta1, closed_top=False)
        _fraction(f"{prefix}.beta2", self.beta2, closed_top=False)
        _positive(f"{prefix}.spike_window", self.spike_window)
        if not self.spike_factor > 1:
            raise ConfigError(f"{prefix}.spike_factor", self.spike_factor, "must be above 1 (5 is the default)")
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(f"{prefix}.warmup_steps", self.warmup_steps,
                              f"must be below optim.max_steps ({self.max_steps})")


@dataclass
class DeepSpeedConfig:
    config: str = opt("ds_configs/auto.json", "DeepSpeed JSON; checked against optim.* and precision. A "
                      "zero_optimization.stage of \"auto\" (ds_configs/auto.json) picks the lowest of stages 1-3 "
                      "whose model states fit one device (megadrp/config/zero_stage.py); a number pins it.")
    precision: str = opt("auto", "'auto' (bf16 on GPUs; on CPU bf16 autocast over fp32 weights where a start-up "
                         "matmul probe finds bf16 faster, else fp32), 'bf16' (on CPU: autocast over fp32 weights), "
                         "'fp16' or 'fp32'; the weights' dtype must agree with the JSON.",
                         choices=("auto", "bf16", "fp16", "fp32"))

    def check(self, prefix: str = "deepspeed"):
        if not self.config:
            raise ConfigError(f"{prefix}.config", self.config, "give a DeepSpeed JSON, e.g. ds_configs/auto.json")


@dataclass
class CheckpointConfig:
    save_interval: int = opt(500, "Steps between checkpoints (a final one is always written).")
    keep_last: int = opt(2, "Checkpoints kept; older ones are deleted after a newer one is complete.")
    resume: str = opt("none", "'none', 'auto' (latest in the run dir, if any) or a checkpoint path.")
    init_from: str = opt("", "Weights-only start from a checkpoint or HF folder (no optimizer, step or data state).")

    def check(self, prefix: str = "checkpoint"):
        _positive(f"{prefix}.save_interval", self.save_interval)
        _positive(f"{prefix}.keep_last", self.keep_last)


@dataclass
class LoggingConfig:
    log_interval: int = opt(10, "Steps between step lines and metrics records.")
    eval_interval: int = opt(0, "Steps between held-out per-domain evaluations (0: only at the end).")
    eval_batches: int = opt(4, "Batches per domain in a held-out evaluation.")
    wandb_mode: str = opt("offline", "wandb mode; 'offline' writes a local run, 'disabled' writes nothing.",
                          choices=("offline", "online", "disabled"))
    wandb_project: str = opt("megadrp", "wandb project name.")
    peak_tflops: float = opt(0.0, "Peak TFLOP/s of one device for the MFU estimate; 0 looks the GPU up in a table "
                             "(megadrp/trainer/mfu.py) and reports n/a on CPU.")

    def check(self, prefix: str = "logging"):
        _positive(f"{prefix}.log_interval", self.log_interval)
        _positive(f"{prefix}.eval_interval", self.eval_interval, allow_zero=True)
        _positive(f"{prefix}.eval_batches", self.eval_batches)
        _positive(f"{prefix}.peak_tflops", self.peak_tflops, allow_zero=True)


@dataclass
class ExportConfig:
    dtype: str = opt("bfloat16", "dtype of the exported weights.", choices=("float32", "bfloat16", "float16"))
    max_shard_size: str = opt("5GB", "Largest safetensors shard of the exported folder.")
    push_to_hub: str = opt("", "Hub repo id to upload the exported folder to (token from HF_TOKEN); empty: no upload.")
    private: bool = opt(False, "Create the Hub repo as private.")

    def check(self, prefix: str = "export"):
        import re

        if not re.fullmatch(r"\d+\s*(KB|MB|GB|TB)?", str(self.max_shard_size).strip(), re.IGNORECASE):
            raise ConfigError(f"{prefix}.max_shard_size", self.max_shard_size, "a size like 5GB, 500MB or a byte count")
        if self.push_to_hub and not re.fullmatch(r"[\w.-]+/[\w.-]+", self.push_to_hub):
            raise ConfigError(f"{prefix}.push_to_hub", self.push_to_hub, "a Hub repo id 'owner/name', or empty")


@dataclass
class EvalConfig:
    seq_length: int = opt(512, "Tokens per evaluation window.")
    max_windows: int = opt(32, "Windows per domain (0: the whole held-out split).")
    batch_size: int = opt(4, "Windows per forward pass.")
    tasks: list = opt(None, "lm-eval-harness tasks (used when lm-eval and its data are available).", factory=list)

    def check(self, prefix: str = "eval"):
        _positive(f"{prefix}.seq_length", self.seq_length)
        _positive(f"{prefix}.max_windows", self.max_windows, allow_zero=True)
        _positive(f"{prefix}.batch_size", self.batch_size)


@dataclass
class DressConfig:
    criterion: str = opt("activation", "Importance criterion that selects the units to remove (activation: mean L2 "
                         "of each unit's output contribution; taylor: sum |w * grad| over its slices; magnitude: "
                         "weight norm). See docs/DRESS.md for the measurement behind the default.",
                         choices=("taylor", "activation", "magnitude"))
    calibration_batches: int = opt(8, "Batches of calibration data for importance scoring.")
    penalty: str = opt("l2", "Norm of the penalty on the selected slices: l2 (sum of squares), l1, or group_l2 "
                       "(sum over units of each unit's L2 norm).", choices=("l2", "l1", "group_l2"))
    apply: str = opt("proximal", "How the penalty acts: 'loss' adds coef * penalty to the LM loss "
                     "(through the optimizer); "
                     "'proximal' shrinks the slices by (1 - coef) after each optimizer step (coef 1 zeroes them).",
                     choices=("loss", "proximal"))
    penalty_init: float = opt(1e-3, "Penalty coefficient at the first regularisation step.")
    penalty_final: float = opt(1.0, "Penalty coefficient at the last regularisation step (geometric growth).")
    regularize_steps: int = opt(100, "Regularisation steps before the selected units are removed.")

    def check(self, prefix: str = "dress"):
        _positive(f"{prefix}.calibration_batches", self.calibration_batches)
        _positive(f"{prefix}.penalty_init", self.penalty_init)
        _positive(f"{prefix}.penalty_final", self.penalty_final)
        _positive(f"{prefix}.regularize_steps", self.regularize_steps)


@dataclass
class DistillConfig:
    teacher: str = opt("", "Teacher of the KD term: a Hugging Face folder with the student's tokenizer and vocabulary, "
                       "built like the student (ZeRO-3 sharded, frozen, no optimizer state, run precision). Empty: "
                       "prune mode uses the masked model's own all-masks-1 pass (no second copy), dress mode a "
                       "frozen copy of model.path; cpt needs a folder. See docs/TRAINING.md, Distillation.")
    alpha: float = opt(0.0, "Weight of the KD term: loss = (1 - alpha) * LM + alpha * KD; 0 turns distillation off "
                       "(no teacher, no extra forward).")
    temperature: float = opt(1.0, "Softmax temperature T of both models' logits; the KL is scaled by T^2.")
    top_k: int = opt(0, "0: KL over the full vocabulary; k > 0: over the teacher's top-k tokens per position plus "
                     "one bucket holding the remaining probability mass.")

    def check(self, prefix: str = "distill"):
        _fraction(f"{prefix}.alpha", self.alpha)
        _positive(f"{prefix}.temperature", self.temperature)
        if self.top_k < 0:
            raise ConfigError(f"{prefix}.top_k", self.top_k, "must be >= 0 (0: the full vocabulary)")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0


def _check_run_dir(run_dir) -> None:
    """A run writes only under the folder it names: an empty name (the current directory, silently), a '~' no
    shell expanded (a folder literally named ~), control characters or an existing file are refused."""
    text = str(run_dir if run_dir is not None else "")
    if not text.strip():
        raise ConfigError("run_dir", run_dir, "is empty; name the run's folder, e.g. run_dir=runs/my_run")
    if text.startswith("~"):
        raise ConfigError("run_dir", run_dir, "starts with '~', which no shell expanded (it was quoted, or came from "
                          "YAML), so megadrp would make a folder named '~'; write the full path")
    if any(ord(c) < 32 for c in text):
        raise ConfigError("run_dir", run_dir, "contains a control character (a newline or tab?); fix the path")
    if os.path.exists(text) and not os.path.isdir(text):
        raise ConfigError("run_dir", run_dir, "is a file, not a folder; choose a folder for the run")


@dataclass
class StagesConfig:
    """What `megadrp run` does with the recipe (megadrp/recipe/runner.py); the training modes never read it."""
    cut: str = opt("oneshot", "How the source is cut to pruning.target: oneshot (activation importance, no training), "
                   "prune (learned masks for stages.cut_steps steps, then export), dress (DReSS, regularising for "
                   "stages.cut_steps steps), or none (no cut: the source itself goes to recovery).",
                   choices=("oneshot", "prune", "dress", "none"))
    cut_steps: int = opt(0, "Training steps of the cut (prune, dress); oneshot and none train nothing.")
    recovery_steps: int = opt(0, "Steps of continued pretraining of the cut model (megadrp cpt); 0: no recovery. "
                              "optim.* applies to both training stages; each stage's optim.max_steps is its steps.")
    corpus: str = opt("", "Text corpus folder (CORPUS/manifest.json, CORPUS/{train,heldout}/DOMAIN.jsonl: the layout "
                      "of experiments/corpus_build.py), tokenised with model.path's tokenizer for training and scored "
                      "held out by the evaluation; empty: data.prefix / data.eval_prefix as given, no evaluation.")
    bin_dir: str = opt("", "Where the tokenised corpus goes; empty: .cache/bin/SOURCE_FOLDER_NAME.")
    nproc: int = opt(1, "Ranks of each training stage on this machine (`megadrp MODE --nproc`).")
    evaluate: bool = opt(True, "Score the source, the cut and the final model per domain (needs stages.corpus), "
                         "write RUN_DIR/eval.json and eval.md and the table into the export's model card.")
    speed: bool = opt(True, "With the evaluation, measure each model's prefill and decode speed and peak memory "
                      "(megadrp eval --speed: each model in a fresh process, ratios to the source).")
    report: bool = opt(True, "Plots and a summary of the last training stage in RUN_DIR/report.")
    gguf: list = opt(None, "GGUF files (llama.cpp) to write into the export, of the types f16 and/or q8_0, each "
                     "checked by reading it back (megadrp export --gguf).", factory=list)

    def check(self, prefix: str = "stages"):
        _positive(f"{prefix}.cut_steps", self.cut_steps, allow_zero=True)
        _positive(f"{prefix}.recovery_steps", self.recovery_steps, allow_zero=True)
        _positive(f"{prefix}.nproc", self.nproc)
        if self.cut in ("prune", "dress") and self.cut_steps == 0:
            raise ConfigError(f"{prefix}.cut_steps", 0, f"stages.cut={self.cut} trains: give its steps (> 0)")
        if any(q not in ("f16", "q8_0") for q in self.gguf):
            raise ConfigError(f"{prefix}.gguf", self.gguf, "a list of GGUF types: f16, q8_0")
        if self.cut in ("oneshot", "none") and self.cut_steps:
            raise ConfigError(f"{prefix}.cut_steps", self.cut_steps, f"stages.cut={self.cut} trains nothing: 0")


@dataclass
class RunConfig:
    mode: str = opt("prune", "The method the run is: a name registered in megadrp.methods (prune, cpt, dress train; "
                             "oneshot cuts without training). The method checks its own sections' rules.")
    run_dir: str = opt("runs/default", "Folder of this run: checkpoints, metrics, the resolved config.")
    model: ModelConfig = opt(None, "Source model.", factory=ModelConfig)
    pruning: PruningConfig = opt(None, "Masks, target shape and Lagrangian (prune mode).", factory=PruningConfig)
    data: DataConfig = opt(None, "Training and held-out data.", factory=DataConfig)
    dro: DroConfig = opt(None, "Per-domain loss tracking and domain reweighting.", factory=DroConfig)
    optim: OptimConfig = opt(None, "Optimizer, schedule and batch sizes.", factory=OptimConfig)
    deepspeed: DeepSpeedConfig = opt(None, "DeepSpeed engine.", factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = opt(None, "Checkpointing and resume.", factory=CheckpointConfig)
    logging: LoggingConfig = opt(None, "Logging, metrics and periodic evaluation.", factory=LoggingConfig)
    export: ExportConfig = opt(None, "Export of the pruned model to a dense HF folder.", factory=ExportConfig)
    eval: EvalConfig = opt(None, "Per-domain evaluation.", factory=EvalConfig)
    dress: DressConfig = opt(None, "DReSS: importance selection and regularisation (dress mode).", factory=DressConfig)
    distill: DistillConfig = opt(None, "Knowledge distillation from a teacher (every mode).", factory=DistillConfig)
    stages: StagesConfig = opt(None, "The stages `megadrp run` goes through (no training mode reads them).",
                               factory=StagesConfig)

    def check(self, prefix: str = ""):
        """Validate every section; raises ConfigError on the first bad field."""
        _check_run_dir(self.run_dir)
        for name in ("model", "pruning", "data", "dro", "optim", "deepspeed", "checkpoint", "logging", "export",
                     "eval", "dress", "distill", "stages"):
            getattr(self, name).check(name)
        if self.dro.reference_losses and self.data.domains and len(self.dro.reference_losses) != len(self.data.domains):
            raise ConfigError("dro.reference_losses", self.dro.reference_losses,
                              f"needs one loss per domain of data.domains ({len(self.data.domains)})")
        if len(self.dro.family_params) != len(self.dro.family_losses):
            raise ConfigError("dro.family_losses", self.dro.family_losses,
                              f"needs one row per model of dro.family_params ({len(self.dro.family_params)})")
