"""The per-worker training loop that TorchTrainer runs (one process per worker).

Each worker builds (or restores) the combiner with combiner_core, wraps it for
DDP with ray.train.torch.prepare_model, streams its shard of the training set
from Ray Data, and reports metrics with a checkpoint at every evaluation.

A checkpoint folder holds:
    model/            the combiner, saved with combiner_core.save_combiner
    optimizer.pt      AdamW and scheduler state (tensors only: loaded weights_only)
    trainer_state.json  step, epoch, batches done in the epoch, loss history, skipped rows
    metrics.json      the metrics reported with this checkpoint
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from combiner_core import (
    Combiner,
    GenerationParams,
    InputError,
    generate,
    load_combiner,
    save_combiner,
)
from combiner_core.training import (
    check_special_tokens,
    collate_pairs,
    encode_pair,
    freeze_encoder,
    parameters_digest,
    sequence_loss,
)

from ..metrics import generation_metrics
from .model import build_start_model
from .spec import FinetuneSpec

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"


@dataclass
class TrainerState:
    """What a checkpoint records about progress (JSON in trainer_state.json)."""

    step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    bad_rows: dict[str, dict[str, str]] = field(default_factory=dict)
    resumed_from_step: int | None = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _lr_lambda(*, warmup: int, total: int, schedule: str):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


def _optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # No decay on biases and normalization weights (1-D tensors), as BERT's recipe.
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_available() or not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _all_gather(obj: Any) -> list[Any]:
    if not dist.is_available() or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _Batcher:
    """Turns raw {id, source, target} rows into collated batches, counting bad rows."""

    def __init__(self, combiner: Combiner, spec: FinetuneSpec, eos_token_id: int, split: str) -> None:
        self.combiner, self.spec, self.eos, self.split = combiner, spec, eos_token_id, split
        self.bad: dict[str, str] = {}  # row id -> cause: each bad row counts once, whatever the epochs

    def pairs(self, rows: dict[str, np.ndarray]) -> tuple[list[Any], list[str], list[str]]:
        pairs, ids, targets = [], [], []
        for row_id, source, target in zip(rows["id"], rows["source"], rows["target"], strict=True):
            try:
                pair = encode_pair(
                    self.combiner,
                    source,
                    target,
                    max_source_tokens=self.spec.data.max_source_tokens,
                    max_target_tokens=self.spec.data.max_target_tokens,
                    eos_token_id=self.eos,
                )
            except InputError as exc:
                if str(row_id) not in self.bad:
                    print(f"[finetune] skipping {self.split} row {row_id}: {exc.cause}: {exc}", flush=True)
                self.bad[str(row_id)] = exc.cause
                continue
            pairs.append(pair)
            ids.append(str(row_id))
            targets.append(target.decode() if isinstance(target, bytes) else str(target))
        return pairs, ids, targets


def _mine(row_id: str, rank: int, world: int) -> bool:
    # Eval sets are not split by Ray (an equal split could drop rows); each worker
    # scores the rows whose id hashes to its rank, so every row is scored once.
    return zlib.crc32(row_id.encode()) % world == rank


def _evaluate(
    combiner: Combiner,
    model: torch.nn.Module,
    spec: FinetuneSpec,
    shard: Any,
    *,
    split: str,
    rank: int,
    world: int,
    device: torch.device,
    special: dict[str, int],
    autocast: bool,
    max_generate: int | None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Loss over every row of the split, generation metrics over up to max_generate rows."""
    batcher = _Batcher(combiner, spec, special["eos_token_id"], split)
    params: GenerationParams = spec.evaluation.generation
    per_rank_limit = None if max_generate is None else math.ceil(max_generate / world)
    loss_sum, tokens, generated = 0.0, 0, 0
    predictions: list[tuple[str, str, str]] = []
    model.eval()
    with torch.inference_mode():
        for rows in shard.iter_batches(batch_size=spec.evaluation.batch_size, batch_format="numpy"):
            keep = [i for i, row_id in enumerate(rows["id"]) if _mine(str(row_id), rank, world)]
            if not keep:
                continue
            pairs, ids, targets = batcher.pairs({k: v[keep] for k, v in rows.items()})
            if not pairs:
                continue
            batch = {k: v.to(device) for k, v in collate_pairs(combiner, pairs).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                s, n = sequence_loss(model, batch, special_ids=special)
            loss_sum += float(s)
            tokens += int(n)
            if per_rank_limit is None or generated < per_rank_limit:
                take = len(pairs) if per_rank_limit is None else min(len(pairs), per_rank_limit - generated)
                inputs = {k: v[:take] for k, v in batch.items() if k != "labels"}
                outs = generate(combiner, inputs, params)
                predictions += [(i, o[0].text, t) for i, o, t in zip(ids[:take], outs, targets[:take], strict=True)]
                generated += take
    model.train()
    loss_sum, tokens = _all_reduce_sum([loss_sum, float(tokens)], device)
    gathered = [p for part in _all_gather(predictions) for p in part]
    skipped: dict[str, str] = {}
    for part in _all_gather(batcher.bad):
        skipped.update(part)
    metrics = {f"{split}_loss": loss_sum / tokens if tokens else float("nan")}
    if gathered:
        gathered.sort()
        scores = generation_metrics(
            [p for _, p, _ in gathered], [r for _, _, r in gathered], metrics=spec.evaluation.metrics
        )
        metrics.update({f"{split}_{k}": v for k, v in scores.items()})
        metrics[f"{split}_samples"] = [
            {"id": i, "prediction": p, "reference": r} for i, p, r in gathered[:5]
        ]
    return metrics, dict(skipped)


def _save_checkpoint(
    folder: Path,
    combiner: Combiner,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    metrics: dict[str, Any],
) -> None:
    save_combiner(combiner, str(folder / MODEL_DIR), extra={"step": state.step, "epoch": state.epoch})
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / OPTIMIZER_FILE)
    (folder / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))


def train_loop(config: dict[str, Any]) -> None:
    """TorchTrainer's train_loop_per_worker. config: {"spec": ..., "train_rows": int}."""
    spec = FinetuneSpec.model_validate(config["spec"])
    tr = spec.training
    ray.data.DataContext.get_current().enable_progress_bars = False
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    autocast = tr.bf16 and device.type == "cuda"

    checkpoint = ray.train.get_checkpoint()
    state = TrainerState()
    optimizer_state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = TrainerState(**json.loads((Path(folder) / STATE_FILE).read_text()))
            local = Path(tempfile.mkdtemp(prefix="finetune-restore-"))
            shutil.copytree(Path(folder) / MODEL_DIR, local / MODEL_DIR)
            optimizer_state = torch.load(Path(folder) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        combiner = load_combiner(str(local / MODEL_DIR))
        state.resumed_from_step = state.step
        print(f"[finetune] rank {rank}: resuming from step {state.step} (epoch {state.epoch})", flush=True)
    else:
        _seed_everything(tr.seed)
        combiner = build_start_model(spec.model, seed=tr.seed)
    # Each restart draws fresh dropout / shuffle randomness from the step it resumes at.
    _seed_everything(tr.seed + state.step)

    special = check_special_tokens(combiner.model)
    if spec.model.freeze_encoder:
        frozen = freeze_encoder(combiner.model)
        print(f"[finetune] froze {frozen} encoder parameters", flush=True)
    combiner.model.train()
    # Encoders carry a pooler that encoder-decoder models never call (BERT, ViT);
    # DDP must be told, or its gradient reduction waits for those parameters forever.
    model = ray.train.torch.prepare_model(
        combiner.model, parallel_strategy_kwargs={"find_unused_parameters": True}
    )

    rows_per_worker = max(1, config["train_rows"] // world)
    batches_per_epoch = math.ceil(rows_per_worker / tr.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // tr.grad_accum_steps)
    total_steps = steps_per_epoch * tr.epochs
    optimizer = _optimizer(model, lr=tr.learning_rate, weight_decay=tr.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(warmup=tr.warmup_steps, total=total_steps, schedule=tr.schedule)
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state["optimizer"])
        scheduler.load_state_dict(optimizer_state["scheduler"])

    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval")
    batcher = _Batcher(combiner, spec, special["eos_token_id"], "train")
    trainable = [p for p in model.parameters() if p.requires_grad]

    def report(extra: dict[str, Any], *, final: bool = False) -> None:
        metrics, eval_skipped = _evaluate(
            combiner, model, spec, eval_shard, split="eval", rank=rank, world=world, device=device,
            special=special, autocast=autocast, max_generate=tr.max_eval_rows,
        )
        if final and spec.data.test is not None:
            test_metrics, test_skipped = _evaluate(
                combiner, model, spec, ray.train.get_dataset_shard("test"), split="test", rank=rank,
                world=world, device=device, special=special, autocast=autocast, max_generate=None,
            )
            metrics.update(test_metrics)
            state.bad_rows["test"] = test_skipped
        train_bad = dict(state.bad_rows.get("train", {}))  # rows skipped before a restart too
        for part in _all_gather(batcher.bad):
            train_bad.update(part)
        state.bad_rows["train"] = train_bad
        state.bad_rows["eval"] = eval_skipped
        state.skipped = {split: dict(Counter(rows.values())) for split, rows in state.bad_rows.items()}
        digests = _all_gather(parameters_digest(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged at step {state.step}: weight digests {digests}")
        metrics.update(extra)
        metrics.update(
            step=state.step, epoch=state.epoch, lr=scheduler.get_last_lr()[0], finished=final,
            replica_weight_digests=digests, skipped_rows=state.skipped, resumed_from_step=state.resumed_from_step,
        )
        point = {k: metrics[k] for k in ("step", "epoch", "train_loss", "eval_loss", "eval_exact_match") if k in metrics}
        if state.history and state.history[-1]["step"] == state.step:
            # The final report can fall on a step that eval_every_steps just reported.
            point["train_loss"] = point.get("train_loss") or state.history[-1].get("train_loss")
            state.history[-1] = point
        else:
            state.history.append(point)
        state.finished = final
        with tempfile.TemporaryDirectory(prefix="finetune-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                _save_checkpoint(Path(tmp), combiner, optimizer, scheduler, state, metrics)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        if rank == 0:
            shown = {k: v for k, v in metrics.items() if not k.endswith("_samples") and k != "replica_weight_digests"}
            print(f"[finetune] report {json.dumps(shown, default=str)}", flush=True)

    if state.finished:
        print("[finetune] this run already finished; nothing to train", flush=True)
        return
    if state.step == 0 and not state.history:
        report({"train_loss": None})  # the starting point of the loss curve
    window_loss, window_tokens, last_log = 0.0, 0, time.time()
    while state.epoch < tr.epochs:
        batches = train_shard.iter_batches(
            batch_size=tr.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=tr.batch_size * 8,
            local_shuffle_seed=tr.seed + state.epoch,
        )
        micro: list[dict[str, torch.Tensor]] = []
        for index, rows in enumerate(batches):
            if index < state.batches_done_in_epoch:
                continue  # consumed before the checkpoint this run resumed from
            pairs, _, _ = batcher.pairs(rows)
            micro.append(collate_pairs(combiner, pairs) if pairs else {})
            state.batches_done_in_epoch = index + 1
            if len(micro) < tr.grad_accum_steps:
                continue
            # Average over label tokens of the whole step, across micro-batches and
            # workers; DDP then averages gradients over workers, hence * world.
            local_tokens = sum(int((m["labels"] != -100).sum()) for m in micro if m)
            (global_tokens,) = _all_reduce_sum([float(local_tokens)], device)
            for i, m in enumerate(micro):
                sync = i == len(micro) - 1
                ctx_mgr = model.no_sync() if (not sync and hasattr(model, "no_sync")) else _null()
                with ctx_mgr:
                    if m:
                        batch = {k: v.to(device) for k, v in m.items()}
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                            loss_sum, count = sequence_loss(model, batch, special_ids=special)
                        loss = loss_sum * world / max(global_tokens, 1.0)
                        window_loss += float(loss_sum.detach())
                        window_tokens += int(count)
                    else:
                        # A batch of only bad rows still joins DDP's gradient all-reduce.
                        loss = sum(p.sum() * 0.0 for p in trainable)
                    loss.backward()
            micro = []
            if tr.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, tr.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if state.step % tr.log_every_steps == 0 and rank == 0:
                rate = tr.log_every_steps / max(time.time() - last_log, 1e-9)
                print(
                    f"[finetune] step {state.step}/{total_steps} epoch {state.epoch} "
                    f"loss {window_loss / max(window_tokens, 1):.4f} ({rate:.2f} steps/s)",
                    flush=True,
                )
                last_log = time.time()
            if tr.eval_every_steps and state.step % tr.eval_every_steps == 0:
                s, n = _all_reduce_sum([window_loss, float(window_tokens)], device)
                window_loss, window_tokens = 0.0, 0
                report({"train_loss": s / n if n else None})
        state.epoch += 1
        state.batches_done_in_epoch = 0
        last_epoch = state.epoch == tr.epochs
        if not tr.eval_every_steps or last_epoch:
            s, n = _all_reduce_sum([window_loss, float(window_tokens)], device)
            window_loss, window_tokens = 0.0, 0
            report({"train_loss": s / n if n else None}, final=last_epoch)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
