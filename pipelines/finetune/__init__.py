"""Fine-tuning combiners on Ray Train (TorchTrainer, DDP), with checkpoints, resume and export."""

from .data import read_pairs
from .plan import FinetunePlan, PairsPlan
from .run import (
    FinetuneResult,
    export_checkpoint,
    plot_loss_curve,
    preflight,
    run_finetune,
    run_finetune_plan,
)
from .spec import (
    DataSource,
    DataSpec,
    EvaluationSpec,
    ExportSpec,
    FinetuneSpec,
    ModelSpec,
    RandomSource,
    RunSpec,
    ScalingSpec,
    TrainingSpec,
    WarmStartSource,
)

__all__ = [
    "DataSource",
    "DataSpec",
    "EvaluationSpec",
    "ExportSpec",
    "FinetuneResult",
    "FinetunePlan",
    "FinetuneSpec",
    "ModelSpec",
    "PairsPlan",
    "RandomSource",
    "RunSpec",
    "ScalingSpec",
    "TrainingSpec",
    "WarmStartSource",
    "export_checkpoint",
    "plot_loss_curve",
    "preflight",
    "read_pairs",
    "run_finetune",
    "run_finetune_plan",
]
