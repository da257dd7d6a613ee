"""The driver side of a fine-tuning job: validate, start Ray Train, export the result."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from combiner_core.storage import get_filesystem, is_hub_id, is_remote, local_path

from ..preflight import Preflight, PreflightError
from ..session import (
    check_private_cpus,
    init_ray,
    private_cpu_problems,
    shape_blocks,
    starts_private_ray,
    warn_cluster_cpus,
)
from ..specs import absolute_spec_paths, spec_hash
from .data import DataSourceError, plan_pairs, read_pairs
from .layout import METRICS_FILE, MODEL_DIR, STATE_FILE
from .plan import FinetunePlan, PairsPlan
from .spec import FinetuneSpec, ModelSpec

# Ray Train v2's controller poll interval (ray.train.v2._internal.constants), for a private Ray.
TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


@dataclass(frozen=True)
class FinetuneResult:
    """What a finished run produced.

    Attributes:
        export_uri: where the trained combiner was exported.
        metrics: the final report's metrics (eval_*, test_*, step, skipped_rows...).
        history: one entry per report: step, epoch, train_loss, eval_loss, eval_exact_match.
        checkpoint_path: the checkpoint the export came from.
        resumed_from_step: the step this invocation resumed from, None for a fresh start.
    """

    export_uri: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    checkpoint_path: str
    resumed_from_step: int | None


def check_model_paths(spec: ModelSpec) -> list[str]:
    """Driver-side checks before Ray starts: local paths that must exist."""
    problems = []
    candidates = []
    if spec.checkpoint is not None:
        candidates.append(("model.checkpoint.uri", spec.checkpoint.uri))
    if spec.warm_start is not None:
        candidates += [
            ("model.warm_start.encoder_uri", spec.warm_start.encoder_uri),
            ("model.warm_start.decoder_uri", spec.warm_start.decoder_uri),
        ]
    if spec.random is not None:
        candidates.append(("model.random.words_file", spec.random.words_file))
    for key, uri in candidates:
        # A words file is always a path; a checkpoint may be a hub id ("org/name").
        if is_remote(uri) or (is_hub_id(uri) and not key.endswith("words_file")):
            continue
        if not local_path(uri).exists():
            problems.append(f"{key}: {uri} does not exist; fix the path")
    return problems


def _exists(uri: str) -> bool:
    fs, path = get_filesystem(uri)
    try:
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001 - no access: treat as absent (the refusal says what to do)
        return False


def _export_problems(spec: FinetuneSpec) -> list[str]:
    """export.uri already holds a combiner from another run, and export.overwrite is off."""
    if spec.export.overwrite:
        return []
    manifest_uri = spec.export.uri.rstrip("/") + "/combiner_manifest.json"
    try:
        with fsspec.open(manifest_uri, "r") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        return []
    except Exception:  # noqa: BLE001 - unreadable or remote without access: the export itself will say
        return []
    run = (manifest.get("extra") or {}).get("training", {}).get("run")
    run_folder = spec.run.storage_path.rstrip("/") + "/" + spec.run.name
    if run == spec.run.name and _exists(run_folder):
        return []  # this run's own earlier export: a finished run started again exports again
    return [
        f"export.uri: {spec.export.uri} already holds a combiner ({'run ' + run if run else 'not from this run'}); "
        "set export.uri to a new folder, or --set export.overwrite=true to replace it"
    ]


def preflight(spec: FinetuneSpec, *, source: str = "spec") -> Preflight[FinetunePlan]:
    """Check the model source, every split's input and the export location on the driver,
    before Ray starts; raise PreflightError listing every problem, or return the plan."""
    spec = absolute_spec_paths(spec)
    problems = check_model_paths(spec.model) + _export_problems(spec) + private_cpu_problems(spec.scaling.cpu_demand())
    splits: dict[str, PairsPlan] = {}
    for key in ("train", "eval", "test"):
        data = getattr(spec.data, key)
        if data is None:
            continue
        try:
            splits[key] = plan_pairs(data, key=f"data.{key}")
        except DataSourceError as exc:
            problems.append(str(exc))
    if problems:
        raise PreflightError(source, problems)
    checked = [f"model: {_model_source(spec)}"]
    for key, pairs in splits.items():
        rows = "rows counted when read" if pairs.rows is None else f"{pairs.rows} row(s)"
        checked.append(f"data.{key}.uri {pairs.reader.root}: {len({f for s in pairs.shards for f in s.files})} "
                       f"{pairs.reader.format} file(s), {rows}")
    checked.append(f"export.uri {spec.export.uri}: {'replaced when done' if spec.export.overwrite else 'free'}")
    return Preflight(plan=FinetunePlan(spec=spec, splits=splits), checked=checked)


def _model_source(spec: FinetuneSpec) -> str:
    m = spec.model
    if m.checkpoint is not None:
        return f"checkpoint {m.checkpoint.uri}"
    if m.warm_start is not None:
        return f"warm start from {m.warm_start.encoder_uri} + {m.warm_start.decoder_uri}"
    return "random weights from configs"


def _run_config(spec: FinetuneSpec) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    storage_filesystem, storage_path = None, spec.run.storage_path
    if is_remote(storage_path):
        # Through fsspec, so s3fs honours AWS_* variables and AWS_ENDPOINT_URL as the
        # rest of this project does.
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs, storage_path = get_filesystem(storage_path)
        storage_filesystem = PyFileSystem(FSSpecHandler(fs))
    else:
        storage_path = str(local_path(storage_path).resolve())
    return RunConfig(
        name=spec.run.name,
        storage_path=storage_path,
        storage_filesystem=storage_filesystem,
        checkpoint_config=CheckpointConfig(num_to_keep=spec.run.num_to_keep),
        failure_config=FailureConfig(max_failures=spec.run.max_failures),
    )


def run_finetune(spec: FinetuneSpec) -> FinetuneResult:
    """Preflight `spec` (raises PreflightError), then train and export (run_finetune_plan)."""
    return run_finetune_plan(preflight(spec).plan)


def _private_ray_trainer(trainer_cls: type) -> type:
    """`trainer_cls` without Ray Train's PlacementGroupCleaner, for a private Ray.

    The cleaner is a detached actor that removes the training placement group if the
    controller dies, and asks Ray's state API every second whether it has. A private Ray
    runs no state API (no dashboard), so on every fine-tune started without RAY_ADDRESS it
    logged "Failed to query Ray Train Controller actor state" once a second for the whole
    run; and a private Ray, placement groups included, ends with the driver anyway.
    Should Ray drop this hook, the callbacks stay as they are.
    """

    class PrivateRayTrainer(trainer_cls):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return [cb for cb in callbacks if type(cb).__name__ != "PlacementGroupCleanerCallback"]

    return PrivateRayTrainer


def run_finetune_plan(plan: FinetunePlan) -> FinetuneResult:
    """Train with TorchTrainer as the plan says, then export the final checkpoint.

    Joins the cluster at RAY_ADDRESS (as under `ray job submit`), else starts a
    private local Ray. Started again with the same run.name and run.storage_path, a killed
    run resumes from its latest checkpoint; a finished one only exports again.
    """
    import ray
    import ray.data
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .loop import train_loop  # torch and Ray Train: imported only when training runs

    spec = plan.spec
    cpus = spec.scaling.cpu_demand()
    check_private_cpus(cpus)
    private = starts_private_ray()
    if private:
        # Ray Train's controller takes one reported result per poll, every 2 s by default,
        # and a worker's next report waits for the last to be taken: on a tiny fine-tune
        # (48 rows, 5 reports) the worker idled between reports and the run ended ~6 s
        # after training did, 52 s in all against 42 s at 0.25 s. A private Ray's workers
        # inherit this process's environment; a cluster keeps its own setting.
        os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
    init_ray()
    warn_cluster_cpus(cpus)
    # Per-operator progress bars from every worker drown the training log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    shape_blocks()  # rows reach the training workers as they are read, not 128 MiB at a time
    datasets = {key: read_pairs(pairs) for key, pairs in plan.splits.items()}
    # Eval and test sets are read once into the object store (not into the driver):
    # every evaluation then iterates stored blocks instead of listing and reading files again.
    for key in ("eval", "test"):
        if key in datasets:
            datasets[key] = datasets[key].materialize()
    # Row count sets the learning-rate schedule's length; for Parquet it comes from
    # file footers, for image folders from the listing; JSONL needs a read.
    train_rows = plan.splits["train"].rows
    if train_rows is None:
        train_rows = datasets["train"].count()
    if train_rows == 0:
        raise PreflightError("spec", [f"data.train.uri: no rows in {spec.data.train.uri}"])
    trainer = (_private_ray_trainer(TorchTrainer) if private else TorchTrainer)(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "train_rows": train_rows},
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker, **({"GPU": 1} if spec.scaling.use_gpu else {})},
        ),
        run_config=_run_config(spec),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"run {spec.run.name} ended without a checkpoint in {spec.run.storage_path}")
    return export_checkpoint(result.checkpoint, spec)


def export_checkpoint(checkpoint: Any, spec: FinetuneSpec) -> FinetuneResult:
    """Copy a training checkpoint's model to export.uri with the loss curve and metrics."""
    from combiner_core import load_combiner, save_combiner

    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        state = json.loads((folder / STATE_FILE).read_text())
        metrics = json.loads((folder / METRICS_FILE).read_text())
        combiner = load_combiner(str(folder / MODEL_DIR))
    summary = {
        "run": spec.run.name,
        "spec_sha256": spec_hash(spec),
        "step": state["step"],
        "epoch": state["epoch"],
        "finished": state["finished"],
        "metrics": metrics,
        "history": state["history"],
        "skipped_rows": state["skipped"],
        "bad_rows": state.get("bad_rows", {}),
    }
    save_combiner(combiner, spec.export.uri, extra={"training": {k: summary[k] for k in ("run", "spec_sha256", "step")}})
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "loss_curve.png"
        plot_loss_curve(state["history"], png, title=spec.run.name)
        _put(png, f"{spec.export.uri.rstrip('/')}/loss_curve.png")
        metrics_path = Path(tmp) / "metrics.json"
        metrics_path.write_text(json.dumps(summary, indent=2, default=str))
        _put(metrics_path, f"{spec.export.uri.rstrip('/')}/metrics.json")
    return FinetuneResult(
        export_uri=spec.export.uri,
        metrics=metrics,
        history=state["history"],
        checkpoint_path=str(checkpoint.path),
        resumed_from_step=metrics.get("resumed_from_step"),
    )


def _put(local: Path, uri: str) -> None:
    if not is_remote(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(local.read_bytes())
        return
    with fsspec.open(uri, "wb") as fh:
        fh.write(local.read_bytes())


def plot_loss_curve(history: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str) -> None:
    """Train and eval loss against optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, style in (("train_loss", "-o"), ("eval_loss", "-s")):
        points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=key.replace("_", " "), markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
