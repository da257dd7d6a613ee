"""The per-worker trainer that TorchTrainer runs (one process per worker).

`Trainer` is a small recipe over combiner_core's building blocks: setup (build or
restore the combiner, DDP via ray.train.torch.prepare_model, AdamW + schedule),
train_step (gradient accumulation over micro-batches, clipping), evaluate (loss and
generation metrics), report (metrics with a checkpoint to Ray Train). Each worker
streams its shard of the training set from Ray Data.

A checkpoint folder holds:
    model/            the combiner, saved with combiner_core.save_combiner
    optimizer.pt      AdamW and scheduler state (tensors only: loaded weights_only)
    trainer_state.json  step, epoch, batches done in the epoch, loss history, skipped rows
    metrics.json      the metrics reported with this checkpoint
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
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

from .. import faults
from ..metrics import generation_metrics
from .layout import METRICS_FILE, MODEL_DIR, OPTIMIZER_FILE, STATE_FILE
from .model import build_start_model
from .spec import FinetuneSpec

log = logging.getLogger(__name__)


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
    """Turns raw {id, source, target, error} rows into collated batches, counting bad rows."""

    def __init__(self, combiner: Combiner, spec: FinetuneSpec, eos_token_id: int, split: str) -> None:
        self.combiner, self.spec, self.eos, self.split = combiner, spec, eos_token_id, split
        self.bad: dict[str, str] = {}  # row id -> cause: each bad row counts once, whatever the epochs

    def _skip(self, row_id: str, cause: str, message: str) -> None:
        if row_id not in self.bad:
            log.warning("[finetune] skipping %s row %s: %s: %s", self.split, row_id, cause, message)
        self.bad[row_id] = cause

    def pairs(self, rows: dict[str, np.ndarray]) -> tuple[list[Any], list[str], list[str]]:
        pairs, ids, targets = [], [], []
        errors = rows.get("error")
        for i, (row_id, source, target) in enumerate(zip(rows["id"], rows["source"], rows["target"], strict=True)):
            row_id = str(row_id)
            if errors is not None and isinstance(errors[i], str) and errors[i]:
                self._skip(row_id, errors[i], "the row could not be read")
                continue
            target = "" if target is None or (isinstance(target, float) and math.isnan(target)) else target
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
                self._skip(row_id, exc.cause, str(exc))
                continue
            pairs.append(pair)
            ids.append(row_id)
            targets.append(target.decode() if isinstance(target, bytes) else str(target))
        return pairs, ids, targets


def _mine(row_id: str, rank: int, world: int) -> bool:
    # Eval sets are not split by Ray (an equal split could drop rows); each worker
    # scores the rows whose id hashes to its rank, so every row is scored once.
    return zlib.crc32(row_id.encode()) % world == rank


class Trainer:
    """One worker's fine-tuning run: setup, train steps, evaluation, checkpoints, reports.

    TorchTrainer starts one per worker (train_loop); DDP keeps the replicas equal.
    """

    def __init__(self, spec: FinetuneSpec, *, train_rows: int) -> None:
        self.spec = spec
        tr = spec.training
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.autocast = tr.bf16 and self.device.type == "cuda"
        self.state, optimizer_state, self.combiner = self._restore_or_build()
        # Each restart draws fresh dropout / shuffle randomness from the step it resumes at.
        _seed_everything(tr.seed + self.state.step)
        self.special = check_special_tokens(self.combiner.model)
        if spec.model.freeze_encoder:
            log.info("[finetune] froze %d encoder parameters", freeze_encoder(self.combiner.model))
        self.combiner.model.train()
        # Encoders carry a pooler that encoder-decoder models never call (BERT, ViT);
        # DDP must be told, or its gradient reduction waits for those parameters forever.
        self.model = ray.train.torch.prepare_model(
            self.combiner.model, parallel_strategy_kwargs={"find_unused_parameters": True}
        )
        rows_per_worker = max(1, train_rows // self.world)
        batches_per_epoch = math.ceil(rows_per_worker / tr.batch_size)
        # The last step of an epoch takes the micro-batches left over (fewer than
        # grad_accum_steps), so an epoch has ceil(batches / accumulation) steps.
        self.steps_per_epoch = max(1, math.ceil(batches_per_epoch / tr.grad_accum_steps))
        self.total_steps = self.steps_per_epoch * tr.epochs
        self.optimizer = _optimizer(self.model, lr=tr.learning_rate, weight_decay=tr.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(warmup=tr.warmup_steps, total=self.total_steps, schedule=tr.schedule)
        )
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state["optimizer"])
            self.scheduler.load_state_dict(optimizer_state["scheduler"])
        self.train_shard = ray.train.get_dataset_shard("train")
        self.batcher = _Batcher(self.combiner, spec, self.special["eos_token_id"], "train")
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.window_loss, self.window_tokens, self.last_log = 0.0, 0, time.time()

    # --- setup ---------------------------------------------------------------------------

    def _restore_or_build(self) -> tuple[TrainerState, dict[str, Any] | None, Combiner]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            _seed_everything(self.spec.training.seed)
            return TrainerState(), None, build_start_model(self.spec.model, seed=self.spec.training.seed)
        with checkpoint.as_directory() as folder:
            state = TrainerState(**json.loads((Path(folder) / STATE_FILE).read_text()))
            local = Path(tempfile.mkdtemp(prefix="finetune-restore-"))
            shutil.copytree(Path(folder) / MODEL_DIR, local / MODEL_DIR)
            optimizer_state = torch.load(Path(folder) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        state.resumed_from_step = state.step
        log.info("[finetune] rank %d: resuming from step %d (epoch %d)", self.rank, state.step, state.epoch)
        return state, optimizer_state, load_combiner(str(local / MODEL_DIR))

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> None:
        tr, state = self.spec.training, self.state
        if state.finished:
            log.info("[finetune] this run already finished; nothing to train")
            return
        if state.step == 0 and not state.history:
            self.report(train_loss=None)  # the starting point of the loss curve
        while state.epoch < tr.epochs:
            batches = self.train_shard.iter_batches(
                batch_size=tr.batch_size,
                batch_format="numpy",
                local_shuffle_buffer_size=tr.batch_size * 8,
                local_shuffle_seed=tr.seed + state.epoch,
            )
            micro: list[dict[str, torch.Tensor]] = []
            for index, rows in enumerate(batches):
                if index < state.batches_done_in_epoch:
                    continue  # consumed before the checkpoint this run resumed from
                pairs, _, _ = self.batcher.pairs(rows)
                micro.append(collate_pairs(self.combiner, pairs) if pairs else {})
                state.batches_done_in_epoch = index + 1
                if len(micro) == tr.grad_accum_steps:
                    self.train_step(micro)
                    micro = []
            if micro:
                # Leftover micro-batches of the epoch make one (smaller) step: no row is
                # dropped. Every worker has the same number of batches (Ray's equal
                # split), so they all take this step together.
                self.train_step(micro)
            state.epoch += 1
            state.batches_done_in_epoch = 0
            last_epoch = state.epoch == tr.epochs
            if not tr.eval_every_steps or last_epoch:
                self.report(train_loss=self._window_loss(), final=last_epoch)

    def train_step(self, micro: list[dict[str, torch.Tensor]]) -> None:
        """One optimizer step over `micro` (gradient accumulation), then logging and reports."""
        tr, state = self.spec.training, self.state
        # Average over label tokens of the whole step, across micro-batches and
        # workers; DDP then averages gradients over workers, hence * world.
        local_tokens = sum(int((m["labels"] != -100).sum()) for m in micro if m)
        (global_tokens,) = _all_reduce_sum([float(local_tokens)], self.device)
        for i, m in enumerate(micro):
            sync = i == len(micro) - 1
            ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else contextlib.nullcontext()
            with ctx:
                if m:
                    batch = {k: v.to(self.device) for k, v in m.items()}
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                        loss_sum, count = sequence_loss(self.model, batch, special_ids=self.special)
                    loss = loss_sum * self.world / max(global_tokens, 1.0)
                    self.window_loss += float(loss_sum.detach())
                    self.window_tokens += int(count)
                else:
                    # A batch of only bad rows still joins DDP's gradient all-reduce.
                    loss = sum(p.sum() * 0.0 for p in self.trainable)
                loss.backward()
        if tr.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, tr.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if state.step % tr.log_every_steps == 0 and self.rank == 0:
            rate = tr.log_every_steps / max(time.time() - self.last_log, 1e-9)
            log.info(
                "[finetune] step %d/%d epoch %d loss %.4f (%.2f steps/s)", state.step, self.total_steps,
                state.epoch, self.window_loss / max(self.window_tokens, 1), rate,
            )
            self.last_log = time.time()
        if tr.eval_every_steps and state.step % tr.eval_every_steps == 0:
            self.report(train_loss=self._window_loss())

    def _window_loss(self) -> float | None:
        """Mean training loss per token since the last report, over all workers."""
        s, n = _all_reduce_sum([self.window_loss, float(self.window_tokens)], self.device)
        self.window_loss, self.window_tokens = 0.0, 0
        return s / n if n else None

    # --- evaluation ----------------------------------------------------------------------

    def evaluate(self, split: str, shard: Any, *, max_generate: int | None) -> tuple[dict[str, Any], dict[str, str]]:
        """Loss over every row of the split, generation metrics over up to max_generate rows."""
        spec, device = self.spec, self.device
        batcher = _Batcher(self.combiner, spec, self.special["eos_token_id"], split)
        params: GenerationParams = spec.evaluation.generation
        per_rank_limit = None if max_generate is None else math.ceil(max_generate / self.world)
        loss_sum, tokens, generated = 0.0, 0, 0
        predictions: list[tuple[str, str, str]] = []
        self.model.eval()
        with torch.inference_mode():
            for rows in shard.iter_batches(batch_size=spec.evaluation.batch_size, batch_format="numpy"):
                keep = [i for i, row_id in enumerate(rows["id"]) if _mine(str(row_id), self.rank, self.world)]
                if not keep:
                    continue
                pairs, ids, targets = batcher.pairs({k: v[keep] for k, v in rows.items()})
                if not pairs:
                    continue
                batch = {k: v.to(device) for k, v in collate_pairs(self.combiner, pairs).items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    s, n = sequence_loss(self.model, batch, special_ids=self.special)
                loss_sum += float(s)
                tokens += int(n)
                if per_rank_limit is None or generated < per_rank_limit:
                    take = len(pairs) if per_rank_limit is None else min(len(pairs), per_rank_limit - generated)
                    inputs = {k: v[:take] for k, v in batch.items() if k != "labels"}
                    outs = generate(self.combiner, inputs, params)
                    predictions += [(i, o[0].text, t) for i, o, t in zip(ids[:take], outs, targets[:take], strict=True)]
                    generated += take
        self.model.train()
        loss_sum, tokens = _all_reduce_sum([loss_sum, float(tokens)], device)
        gathered = sorted(p for part in _all_gather(predictions) for p in part)
        skipped: dict[str, str] = {}
        for part in _all_gather(batcher.bad):
            skipped.update(part)
        metrics: dict[str, Any] = {f"{split}_loss": loss_sum / tokens if tokens else float("nan")}
        if gathered:
            scores = generation_metrics(
                [p for _, p, _ in gathered], [r for _, _, r in gathered], metrics=spec.evaluation.metrics
            )
            metrics.update({f"{split}_{k}": v for k, v in scores.items()})
            metrics[f"{split}_samples"] = [{"id": i, "prediction": p, "reference": r} for i, p, r in gathered[:5]]
        return metrics, skipped

    # --- reports and checkpoints ---------------------------------------------------------

    def report(self, *, train_loss: float | None, final: bool = False) -> None:
        """Evaluate, then report metrics with a checkpoint (written by rank 0) to Ray Train."""
        spec, state = self.spec, self.state
        metrics, eval_skipped = self.evaluate(
            "eval", ray.train.get_dataset_shard("eval"), max_generate=spec.training.max_eval_rows
        )
        if final and spec.data.test is not None:
            test_metrics, state.bad_rows["test"] = self.evaluate(
                "test", ray.train.get_dataset_shard("test"), max_generate=None
            )
            metrics.update(test_metrics)
        train_bad = dict(state.bad_rows.get("train", {}))  # rows skipped before a restart too
        for part in _all_gather(self.batcher.bad):
            train_bad.update(part)
        state.bad_rows["train"] = train_bad
        state.bad_rows["eval"] = eval_skipped
        state.skipped = {split: dict(Counter(rows.values())) for split, rows in state.bad_rows.items()}
        digests = _all_gather(parameters_digest(self.model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged at step {state.step}: weight digests {digests}")
        metrics.update(
            train_loss=train_loss, step=state.step, epoch=state.epoch, lr=self.scheduler.get_last_lr()[0],
            finished=final, replica_weight_digests=digests, skipped_rows=state.skipped,
            resumed_from_step=state.resumed_from_step,
        )
        self._record_history(metrics)
        state.finished = final
        with tempfile.TemporaryDirectory(prefix="finetune-ckpt-") as tmp:
            checkpoint = None
            if self.rank == 0:
                self.save_checkpoint(Path(tmp), metrics)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if self.rank == 0:
            shown = {k: v for k, v in metrics.items() if not k.endswith("_samples") and k != "replica_weight_digests"}
            log.info("[finetune] report %s", json.dumps(shown, default=str))
            faults.maybe_pause("train_after_checkpoint", state.step, str(os.getpid()))

    def _record_history(self, metrics: dict[str, Any]) -> None:
        state = self.state
        point = {k: metrics[k] for k in ("step", "epoch", "train_loss", "eval_loss", "eval_exact_match") if k in metrics}
        if state.history and state.history[-1]["step"] == state.step:
            # The final report can fall on a step that eval_every_steps just reported.
            point["train_loss"] = point.get("train_loss") or state.history[-1].get("train_loss")
            state.history[-1] = point
        else:
            state.history.append(point)

    def save_checkpoint(self, folder: Path, metrics: dict[str, Any]) -> None:
        state = self.state
        save_combiner(self.combiner, str(folder / MODEL_DIR), extra={"step": state.step, "epoch": state.epoch})
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            folder / OPTIMIZER_FILE,
        )
        (folder / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))


def _worker_logging() -> None:
    """INFO lines of this module on the worker's stderr, which Ray forwards to the driver."""
    logger = logging.getLogger("pipelines")
    if not any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def train_loop(config: dict[str, Any]) -> None:
    """TorchTrainer's train_loop_per_worker. config: {"spec": ..., "train_rows": int}."""
    _worker_logging()
    ray.data.DataContext.get_current().enable_progress_bars = False
    Trainer(FinetuneSpec.model_validate(config["spec"]), train_rows=config["train_rows"]).fit()
