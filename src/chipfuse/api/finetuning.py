"""Fine-tune a model's LoRA adapters on the emulated dies: `finetune` (and `plan_finetune` to check first).

    from chipfuse import api
    r = api.finetune("examples/finetune/clinic-train.jsonl", system="talk-4die-d2d", steps=60)
    print(r.val_loss_before, r.val_loss_after, r.adapter_dir)

The job is planned before any die starts: the pipeline plan of the model on the system, every die's
training memory (a job that does not fit is refused, with what would fit) and the simulator's step
time and energy. The dies then train their own layers' adapters; the result is saved in the layout
peft reads (adapter_config.json + adapter_model.safetensors), with a checkpoint a stopped run resumes
from (adapters, AdamW state, step; the data order and dropout follow from the seed and the step).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..compile.train import TARGETS, LoraSpec, TrainMemory, TrainPlanError, TrainSpec, check_fits  # noqa: F401 (re-exported)
from ..errors import ChipfuseError
from ..sim.train import TrainPrediction, predict_train
from .core import DEFAULT_SYSTEM, _formats_asked, load_system
from .progress import Progress, status_of

CHECKPOINT = "checkpoint"
ADAPTER_CONFIG, ADAPTER_WEIGHTS, META = "adapter_config.json", "adapter_model.safetensors", "chipfuse_finetune.json"


@dataclass(frozen=True)
class FinetunePlan:
    """What a job will hold and take before it runs: the pipeline plan, each die's memory, the predicted step."""

    plan: object  # plan.Plan
    spec: TrainSpec
    memory: TrainMemory
    prediction: TrainPrediction


@dataclass(frozen=True)
class FinetuneResult:
    adapter_dir: Path
    dies: tuple[str, ...]
    steps: int  # optimiser steps done in all (a resumed run counts its earlier ones)
    start_step: int  # 0, or the step a resumed run began at
    losses: tuple[float, ...]  # training loss per step (this run's and any earlier run's)
    val_losses: tuple[tuple[int, float], ...]  # (step, validation loss); step 0 is the base model
    train_examples: int
    val_examples: int
    tokens: int  # non-padding tokens trained on in this run
    tokens_per_s: float  # this run's training tokens per second of steps (evaluation and start-up excluded)
    step_s: float  # median seconds per step in this run
    memory: TrainMemory
    predicted: TrainPrediction
    truncated: int
    elapsed_s: float

    def to_json(self) -> dict:
        return {"adapter_dir": str(self.adapter_dir), "dies": list(self.dies), "steps": self.steps,
                "start_step": self.start_step, "losses": list(self.losses),
                "val_losses": [list(v) for v in self.val_losses], "val_loss_before": self.val_loss_before,
                "val_loss_after": self.val_loss_after, "train_examples": self.train_examples,
                "val_examples": self.val_examples, "tokens": self.tokens, "tokens_per_s": self.tokens_per_s,
                "step_s": self.step_s, "truncated": self.truncated, "elapsed_s": self.elapsed_s,
                "memory": [{**asdict(d), "total_bytes": d.total_bytes} for d in self.memory.dies],
                "predicted": {"step_s": self.predicted.step_s, "tokens_per_s": self.predicted.tokens_per_s,
                              "bubble": self.predicted.bubble, "j_per_step": self.predicted.j_per_step,
                              "power_w": self.predicted.power_w}}

    @property
    def val_loss_before(self) -> float | None:
        return next((v for s, v in self.val_losses if s == 0), None)

    @property
    def val_loss_after(self) -> float | None:
        return self.val_losses[-1][1] if self.val_losses else None


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to zero at `steps` (transformers' "linear")."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    return lr * max(0.0, (steps - step) / max(1, steps - warmup))


def plan_finetune(system=DEFAULT_SYSTEM, model=None, precision: str | None = None, spec: TrainSpec | None = None, *,
                  dies: int | None = None, quantized: str | Path | None = None) -> FinetunePlan:
    """The pipeline plan of `model` (a runnable model file; None: the embedded SmolLM2) on `system`, every die's
    training memory for `spec` and the predicted step. TrainPlanError if it does not fit (what fits, said)."""
    from ..compile.compiler import compile_plan
    from ..hw.spec import System
    from ..runtime.device import resolve_model

    spec = spec or TrainSpec()
    sysm = system if isinstance(system, System) else load_system(system)
    path, cfg = resolve_model(model)
    if getattr(cfg, "is_moe", False):
        raise TrainPlanError(f"{cfg.name} is a mixture of experts: chipfuse fine-tunes dense models only")
    p = compile_plan(cfg, sysm, _formats_asked(precision, None), context=spec.seq_len, batch=1,
                     prompt_tokens=min(spec.seq_len, 512), max_dies=dies, model_source=str(path),
                     quantized_weights=str(quantized) if quantized else None, split="pipeline")
    from ..runtime.device import planning_only

    why = p.unsupported() or planning_only(p)
    if why:
        raise TrainPlanError(why)
    memory = check_fits(p, spec)
    return FinetunePlan(p, spec, memory, predict_train(p, spec, system=sysm))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _write(path: Path, data: bytes) -> None:
    """A file written whole or not at all (beside it, then renamed over)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_adapter(folder: Path, tensors: dict, lora: LoraSpec, base: str, meta: dict) -> None:
    """Adapters in peft's layout (read by PeftModel.from_pretrained), plus chipfuse's notes on the job; each file
    written whole or not at all, the weights before the config that names them."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
              "lora_dropout": lora.dropout, "target_modules": sorted(lora.targets), "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "base_model_name_or_path": base,
              "modules_to_save": None, "use_rslora": False, "init_lora_weights": True}
    _write(folder / ADAPTER_WEIGHTS, save({k: v.detach().float().contiguous() for k, v in tensors.items()
                                           if "/" not in k}))
    _write(folder / META, (json.dumps(meta, indent=2) + "\n").encode())
    _write(folder / ADAPTER_CONFIG, (json.dumps(config, indent=2) + "\n").encode())


def _replace_dir(tmp: Path, folder: Path) -> None:
    old = folder.with_name(folder.name + f".old{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _save_checkpoint(out: Path, state: dict, record: dict) -> None:
    from safetensors.torch import save_file

    folder = out / CHECKPOINT
    tmp = folder.with_name(CHECKPOINT + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "state.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps(record, indent=2) + "\n")
    _replace_dir(tmp, folder)


def _load_checkpoint(out: Path, expect: dict) -> tuple[dict, dict]:
    """(state tensors, trainer record) of `out`'s checkpoint, after checking it is this job's."""
    from safetensors.torch import load_file

    folder = out / CHECKPOINT
    if not (folder / "trainer.json").exists():
        raise ChipfuseError(f"--resume: {folder} holds no checkpoint (train with --save-every N, or drop --resume)")
    record = json.loads((folder / "trainer.json").read_text())
    differ = [k for k, v in expect.items() if record.get("job", {}).get(k) != v]
    if differ:
        got = record.get("job", {})
        raise ChipfuseError("--resume: the checkpoint in " f"{folder} is of another job: " + "; ".join(
            f"{k} was {got.get(k)!r}, now {expect[k]!r}" for k in differ) + " (give the same settings, or a new --out)")
    return load_file(str(folder / "state.safetensors")), record


def finetune(data: str | Path, *, system=DEFAULT_SYSTEM, model=None, precision: str | None = None,
             out: str | Path = "chipfuse-adapter", rank: int = 8, alpha: float = 16.0, dropout: float = 0.05,
             targets: tuple[str, ...] = TARGETS, steps: int = 100, lr: float = 2e-4, warmup: int = 0,
             seq_len: int = 256, micro_batch: int = 4, micro_batches: int = 4, checkpointing: bool = False,
             val: str | Path | None = None, val_fraction: float = 0.1, eval_every: int = 0, save_every: int = 0,
             resume: bool = False, seed: int = 0, dies: int | None = None, threads: int | None = None,
             max_grad_norm: float = 1.0, weight_decay: float = 0.0, progress: Progress | None = None,
             on_status=None) -> FinetuneResult:
    """Train LoRA adapters of `model` on `data` (chat JSONL or text) over `system`'s dies; save them in `out`.

    Each step is `micro_batches` micro-batches of `micro_batch` sequences of at most `seq_len` tokens, pipelined
    over the dies; the learning rate warms up over `warmup` steps and decays linearly to zero at `steps`.
    `eval_every` (0: only before and after) and `save_every` (0: only at the end) are in steps; `resume` goes on
    from `out`'s checkpoint; `threads`: each die's kernels (default: this machine's cores shared among the dies)."""
    from ..runtime.device import resolve_model
    from ..runtime.tokenizer import load_tokenizer
    from ..runtime.train_data import collate as make_batch
    from ..runtime.train_data import eval_batches, load_dataset, split, step_examples
    from ..runtime.trainer import TrainSession

    started = time.time()
    bar = status_of(progress)
    status = on_status or (lambda m: None)
    for name, v, lo in (("steps", steps, 1), ("eval_every", eval_every, 0), ("save_every", save_every, 0),
                        ("warmup", warmup, 0), ("seed", seed, 0)):
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= 10_000_000):
            raise TrainPlanError(f"{name} {v!r}: give a whole number from {lo} to 10,000,000")
    for name, v in (("lr", lr), ("max_grad_norm", max_grad_norm), ("weight_decay", weight_decay)):
        if not (isinstance(v, int | float) and 0 <= float(v) < 1e6) or (name == "lr" and not float(v) > 0):
            raise TrainPlanError(f"{name} {v!r}: give a {'positive' if name == 'lr' else 'non-negative'} number")
    spec = TrainSpec(LoraSpec(rank, float(alpha), float(dropout), tuple(targets)), seq_len, micro_batch,
                     micro_batches, checkpointing)
    fp = plan_finetune(system, model, precision, spec, dies=dies)
    path, _ = resolve_model(model)
    status("reading the tokenizer and the data")
    tok = load_tokenizer(path)
    pad = tok.eos_token_id if getattr(tok, "eos_token_id", None) is not None else 0
    data = Path(data)
    ds = load_dataset(data, tok, seq_len)
    if val is not None:
        train_ds, val_ds = ds, load_dataset(Path(val), tok, seq_len)
    else:
        train_ds, val_ds = split(ds, val_fraction, seed)
    out = Path(out)
    job = {"data": _file_digest(data), "model": str(path), "rank": rank, "alpha": float(alpha),
           "dropout": float(dropout), "targets": sorted(targets), "seq_len": seq_len, "micro_batch": micro_batch,
           "micro_batches": micro_batches, "seed": seed, "lr": float(lr), "warmup": warmup, "steps": steps,
           "precision": fp.plan.stages[0].format, "dies": [st.die for st in fp.plan.stages]}
    state, record = ({}, {}) if not resume else _load_checkpoint(out, job)
    start = int(record.get("step", 0))
    losses = list(record.get("losses", []))
    val_losses = [tuple(x) for x in record.get("val_losses", [])]
    if start >= steps:
        raise ChipfuseError(f"--resume: the checkpoint in {out / CHECKPOINT} is already at step {start} of {steps}")
    per_step = spec.sequences_per_step
    vb = eval_batches(val_ds, micro_batch, micro_batches, pad) if val_ds else []

    def evaluate(session) -> float:
        total = sum(session.evaluate(b) * b.n_labels for b in vb)
        return total / max(1, sum(b.n_labels for b in vb))

    status(f"starting {len(fp.plan.stages)} die(s) for training")
    threads = threads or max(1, (os.cpu_count() or 1) // len(fp.plan.stages))  # the dies share this machine's cores
    session = TrainSession(fp.plan, path, spec, seed=seed, weight_decay=weight_decay, threads=threads,
                           on_status=status)
    times: list[float] = []
    tokens = 0
    try:
        if state:
            session.load_state(state)
        if vb and start == 0:
            bar.describe("validation loss of the base model")
            val_losses.append((0, evaluate(session)))
        bar.start(steps - start, f"step {start + 1}/{steps}")
        for k in range(start, steps):
            chosen = step_examples(train_ds, k, per_step, seed)
            batch = make_batch(chosen, micro_batch, pad)
            t0 = time.perf_counter()
            st = session.step(batch, k, lr_at(k, steps, lr, warmup), max_grad_norm)
            times.append(time.perf_counter() - t0)
            tokens += sum(len(e.ids) for e in chosen)  # padding is not counted
            losses.append(st.loss)
            rate = tokens / sum(times)
            done = k + 1
            if vb and eval_every and done % eval_every == 0 and done < steps:
                val_losses.append((done, evaluate(session)))
            if save_every and done % save_every == 0 and done < steps:
                _save_checkpoint(out, session.state(), {"step": done, "job": job, "losses": losses,
                                                        "val_losses": val_losses})
            v = f", val {val_losses[-1][1]:.3f}" if val_losses and val_losses[-1][0] == done else ""
            bar.advance(1, f"step {done}/{steps}: loss {st.loss:.3f}{v}, {rate:,.0f} tokens/s")
        if vb:
            bar.describe("validation loss after training")
            val_losses.append((steps, evaluate(session)))
        final = session.state()
    finally:
        session.close()
    meta = {"job": job, "steps": steps, "losses": losses, "val_losses": val_losses,
            "spec": asdict(spec), "memory_bytes": {d.die: d.total_bytes for d in fp.memory.dies}}
    save_adapter(out, final, spec.lora, str(path), meta)
    _save_checkpoint(out, final, {"step": steps, "job": job, "losses": losses, "val_losses": val_losses})
    times_sorted = sorted(times)
    return FinetuneResult(
        adapter_dir=out, dies=tuple(st.die for st in fp.plan.stages), steps=steps, start_step=start,
        losses=tuple(losses), val_losses=tuple((int(s), float(v)) for s, v in val_losses),
        train_examples=len(train_ds.examples), val_examples=len(val_ds.examples) if val_ds else 0, tokens=tokens,
        tokens_per_s=tokens / sum(times) if times else 0.0,
        step_s=times_sorted[len(times_sorted) // 2] if times else 0.0, memory=fp.memory, predicted=fp.prediction,
        truncated=ds.truncated, elapsed_s=time.time() - started)


HF_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "qwen3": "Qwen3ForCausalLM"}
def _hf_tensor() -> dict[str, str]:
    """Canonical layer tensor name -> its name in a Hugging Face checkpoint (the weights reader's table, inverted)."""
    from ..runtime.weights import HF_LAYER

    return {v: k for k, v in HF_LAYER.items()}


@dataclass(frozen=True)
class MergeResult:
    """The merged model folder and, with validation data, how much of the fine-tuning survived the merge."""

    folder: Path
    precision: str  # the dies' format the merged model is re-quantized to when it runs
    method: str  # "gptq": codes fitted on calibration text, in `quantized`; "rtn": rounded when the dies load it
    quantized: Path | None  # the GPTQ codes (run with --quantized), None for rtn
    val_examples: int
    loss_base: float | None  # the base model at the dies' format, no adapter
    loss_adapter: float | None  # the base at the dies' format with the adapter unmerged (what `run --adapter` serves)
    loss_merged: float | None  # the merged model re-quantized to the dies' format

    @property
    def kept(self) -> float | None:
        """Share of the adapter's validation gain the merged model keeps (1: all of it)."""
        if self.loss_base is None or self.loss_adapter is None or self.loss_merged is None:
            return None
        gain = self.loss_base - self.loss_adapter
        return (self.loss_base - self.loss_merged) / gain if gain > 0 else None

    @property
    def run_command(self) -> str:
        q = f" --quantized {self.quantized}" if self.quantized else ""
        return f"chipfuse run --model {self.folder} --precision {self.precision}{q}"

    def to_json(self) -> dict:
        return {"folder": str(self.folder), "precision": self.precision, "method": self.method,
                "quantized": str(self.quantized) if self.quantized else None, "val_examples": self.val_examples,
                "loss_base": self.loss_base, "loss_adapter": self.loss_adapter, "loss_merged": self.loss_merged,
                "kept": self.kept, "run": self.run_command}


def _hf_config(path: Path, cfg) -> dict:
    """config.json of the model at `path` (a GGUF's metadata translated, or the folder's own)."""
    if path.is_dir():
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    from ..frontends.gguf_meta import gguf_to_hf_config

    out = gguf_to_hf_config(path)
    out.setdefault("head_dim", cfg.head_dim)
    return {"architectures": [HF_ARCH[cfg.family]], **out, "torch_dtype": "float32"}


def _copy_tokenizer(path: Path, out: Path) -> None:
    from ..runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    folder = getattr(tok, "folder", None)
    if folder is None:
        tok.save_pretrained(str(out))
        return
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (Path(folder) / name).exists():
            shutil.copyfile(Path(folder) / name, out / name)


def merge_adapter(adapter: str | Path, out: str | Path, *, model=None, data: str | Path | None = None,
                  calibration: str | Path | None = None, method: str = "auto", system=DEFAULT_SYSTEM,
                  precision: str | None = None, seq_len: int = 256, progress: Progress | None = None) -> MergeResult:
    """Fold `adapter` into `model`'s FP32 weights (W + scale B A) and write a model folder (config.json,
    model.safetensors, the tokenizer) that chipfuse runs on the dies in their format.

    Re-quantizing a merged model by rounding to nearest erases most of a LoRA's change at INT4 (it is
    smaller than a step of the grid), so with `method` "gptq" (the default, "auto", wherever the dies' format
    has GPTQ and calibration text is given: `calibration`, else `data`) the layers' codes are fitted to the merged
    weights' outputs on that text and saved beside the model (`quantized.safetensors`; run with --quantized).
    With `data`, the validation loss of the base, of the adapter unmerged and of the merged model, all at the
    dies' format, says how much of the fine-tuning the merge keeps."""
    from safetensors.torch import save

    from ..runtime.adapters import read_adapter
    from ..runtime.device import resolve_model
    from ..runtime.weights import open_weights, wanted_names

    if method not in ("auto", "gptq", "rtn"):
        raise ChipfuseError(f"--method {method!r}: give gptq, rtn or auto")
    bar = status_of(progress)
    path, cfg = resolve_model(model)
    ads = read_adapter(adapter, cfg)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise ChipfuseError(f"{out} exists and is not a model folder: give a new folder for the merged model")
    fp = plan_finetune(system, model, precision, TrainSpec(seq_len=seq_len, micro_batch=1, micro_batches=1))
    fmt_name = fp.plan.stages[0].format
    head_name = fp.plan.stages[-1].head_format or fp.plan.stages[0].head_format
    calib = calibration if calibration is not None else data
    from ..quant.formats import get_format
    from ..quant.gptq import has_gptq

    use_gptq = method == "gptq" or (method == "auto" and calib is not None and has_gptq(get_format(fmt_name)))
    if use_gptq and (calib is None or not has_gptq(get_format(fmt_name))):
        raise ChipfuseError(f"--method gptq needs calibration text (--data or --calibration) and an INT4 or INT8 "
                            f"format (the dies hold {fmt_name})")
    bar.describe("reading the base model's weights")
    w = open_weights(path, cfg).load(wanted_names(cfg, range(0, cfg.num_layers + 2)))
    merged = dict(w)
    for layer, per in ads.layers.items():
        for t, (a, b) in per.items():
            key = f"layers.{layer}.{t}"
            merged[key] = w[key] + b @ a  # b already carries the scale
    tensors = {"model.embed_tokens.weight": merged["embed"], "model.norm.weight": merged["final_norm"]}
    if not cfg.tied_embeddings:
        tensors["lm_head.weight"] = merged["lm_head"]
    hf_tensor = _hf_tensor()
    for k, v in merged.items():
        if k.startswith("layers."):
            _, i, name = k.split(".", 2)
            tensors[f"model.layers.{i}.{hf_tensor[name]}"] = v
    out.mkdir(parents=True, exist_ok=True)
    bar.describe(f"writing the merged model to {out}")
    _write(out / "model.safetensors", save({k: v.contiguous() for k, v in tensors.items()}))
    _copy_tokenizer(path, out)
    _write(out / "config.json", (json.dumps(_hf_config(path, cfg), indent=2) + "\n").encode())
    codes, qpath = None, None
    if use_gptq:
        codes, qpath = _gptq_merged(out, cfg, path, merged, Path(calib), fmt_name, head_name, seq_len, bar)
    if data is None:
        return MergeResult(out, fmt_name, "gptq" if use_gptq else "rtn", qpath, 0, None, None, None)
    return _merge_losses(out, fmt_name, head_name, "gptq" if use_gptq else "rtn", qpath, codes, path, cfg, w,
                         merged, ads, Path(data), seq_len, bar)


def _gptq_merged(out: Path, cfg, path: Path, merged: dict, calib: Path, fmt_name: str, head_name: str | None,
                 seq_len: int, bar):
    """GPTQ codes of the merged layers, fitted on `calib`'s sequences, saved as OUT/quantized.safetensors."""
    from ..quant.checkpoint import save_quantized
    from ..quant.formats import Recipe, get_format
    from ..quant.gptq import collect_hessians, gptq_weights
    from ..runtime.tokenizer import load_tokenizer
    from ..runtime.train_data import load_dataset

    tok = load_tokenizer(path)
    wins = [list(e.ids) for e in load_dataset(calib, tok, seq_len).examples]
    bar.describe(f"GPTQ: the merged layers' inputs on {len(wins)} sequences of {calib.name}")
    hs = collect_hessians(cfg, merged, wins)
    fmt = get_format(fmt_name)
    bar.start(cfg.num_layers, f"GPTQ: codes of the merged layers at {fmt_name}")
    codes = gptq_weights(cfg, merged, hs, fmt, progress=lambda: bar.advance(1))
    qpath = out / "quantized.safetensors"
    recipe = Recipe.of(fmt, get_format(head_name) if head_name else None)
    save_quantized(qpath, codes, recipe, {"layers": cfg.num_layers, "method": "gptq", "model": cfg.name,
                                          "calibration": str(calib), "merged_from": "LoRA adapter"})
    return codes, qpath


def _merge_losses(out, fmt_name, head_name, method, qpath, codes, path, cfg, w, merged, ads, data: Path,
                  seq_len: int, bar) -> MergeResult:
    import torch

    from ..quant.formats import get_format
    from ..runtime.lora import TrainStage
    from ..runtime.tokenizer import load_tokenizer
    from ..runtime.train_data import eval_batches, load_dataset

    tok = load_tokenizer(path)
    pad = tok.eos_token_id if getattr(tok, "eos_token_id", None) is not None else 0
    ds = load_dataset(data, tok, seq_len)
    batches = eval_batches(ds, 4, 1, pad)
    fmt, head_fmt = get_format(fmt_name), get_format(head_name) if head_name else None
    spec = LoraSpec(rank=ads.rank, targets=ads.targets, alpha=ads.scale * ads.rank, dropout=0.0)
    blocks = (0, cfg.num_layers + 2)

    def loss_of(stage) -> float:
        total = n = 0.0
        with torch.no_grad():
            for b in batches:
                for m in range(b.ids.shape[0]):
                    total += float(stage.loss_sum(stage.forward(b.ids[m]), b.labels[m]))
                n += b.n_labels
        return total / max(n, 1)

    bar.describe("validation loss: the base model")
    base = TrainStage(cfg, w, blocks, fmt, spec, 0, head_fmt)
    loss_base = loss_of(base)
    bar.describe("validation loss: the adapter unmerged")
    from safetensors.torch import load_file

    base.load_adapters(load_file(str(Path(ads.folder) / "adapter_model.safetensors")))
    loss_adapter = loss_of(base)
    del base
    bar.describe("validation loss: the merged model, re-quantized")
    loss_merged = loss_of(TrainStage(cfg, merged, blocks, fmt, spec, 0, head_fmt, quantized=codes))
    return MergeResult(out, fmt_name, method, qpath, len(ds.examples), loss_base, loss_adapter, loss_merged)
