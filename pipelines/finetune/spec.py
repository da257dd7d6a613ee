"""FinetuneSpec: what `jobs/finetune.py` trains, on what data, how, and where it writes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, model_validator

from combiner_core import GenerationParams

from ..reading import InputSource, ReaderOptions
from ..session import CpuDemand
from ..specs import ModelSource, StrictModel, path_field


class WarmStartSource(StrictModel):
    """Join a pretrained encoder and decoder; cross-attention starts random."""

    encoder_uri: str = path_field(description="encoder checkpoint: local folder, s3:// prefix, or hub id when online",
                                  hub_ids=True)
    decoder_uri: str = path_field(description="decoder checkpoint that can cross-attend (BERT, GPT-2, TrOCR, "
                                  "BART...)", hub_ids=True)
    tokenizer_uri: str | None = path_field(None, description="decoder tokenizer, when not beside the decoder weights",
                                           hub_ids=True)
    allow_pickle: bool = Field(False, description="permit .bin (pickle) weights when no safetensors exist")


class RandomSource(StrictModel):
    """A combiner built from configs with random weights and a word-level tokenizer."""

    encoder_config: dict[str, Any] = Field(description="encoder config with model_type (e.g. vit, bert)")
    decoder_config: dict[str, Any] = Field(
        description="decoder config with model_type (e.g. gpt2, bert); vocab_size and special ids are filled in"
    )
    words_file: str = path_field(description="text file, one word per line: the word-level tokenizer's vocabulary")
    image_size: int | None = Field(
        None, ge=8, description="vision encoders: pixels per side the image processor resizes to"
    )


class ModelSpec(StrictModel):
    """Where the model to fine-tune comes from. Exactly one of the three sources."""

    checkpoint: ModelSource | None = Field(None, description="continue from a saved combiner")
    warm_start: WarmStartSource | None = Field(None, description="join a pretrained encoder and decoder")
    random: RandomSource | None = Field(None, description="build from configs with random weights")
    freeze_encoder: bool = Field(False, description="train only the decoder (and cross-attention)")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [n for n in ("checkpoint", "warm_start", "random") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of model.checkpoint, model.warm_start, model.random (got {given or 'none'})"
            )
        return self


class DataSource(InputSource):
    """One set of (input, target) pairs, read like every job's input (pipelines.reading.source)."""

    format: Literal["parquet", "jsonl", "images", "webdataset"] = Field(
        "parquet",
        description="parquet or jsonl files (input_column, target_column), a folder of images "
        "with a captions file (captions_file) holding the targets, or WebDataset tar shards "
        "(target_column: a text member such as txt, or json.<field>; default txt)",
    )
    input_column: str | None = Field(
        "image", description="parquet / jsonl: column with the input: image bytes or text"
    )
    target_column: str = Field("caption", description="parquet / jsonl: column with the target text")
    id_column: str | None = Field(
        "id",
        description="parquet / jsonl: column with a unique row id (reported for bad rows); null: "
        "'<file relative to uri>#<row>' (images: the file path)",
    )
    max_rows: int | None = Field(None, ge=1, description="use only the first N rows (quick runs)")

    @model_validator(mode="after")
    def _defaults_for_images(self) -> DataSource:
        # An image's id is its path and its input the file: the column defaults do not
        # apply (only columns the user set are reported as misplaced).
        if self.format in ("images", "webdataset"):
            for name in ("input_column", "id_column"):
                if name not in self.model_fields_set:
                    object.__setattr__(self, name, None)
        if self.format == "webdataset" and "target_column" not in self.model_fields_set:
            object.__setattr__(self, "target_column", "txt")  # img2dataset's caption member
        return self

    def pairs_reader(self) -> ReaderOptions:
        """Reader options: the target is read as the row's reference text.

        An image folder without captions_file takes captions.jsonl inside it.
        """
        captions = self.captions_file
        if self.format == "images" and not captions:
            captions = self.uri.rstrip("/") + "/captions.jsonl"
        options = self.reader_options(reference_column=self.target_column if self.format != "images" else None)
        return replace(options, captions_file=captions)


class DataSpec(StrictModel):
    """Training and evaluation data."""

    train: DataSource = Field(description="training pairs")
    eval: DataSource = Field(description="evaluation pairs, scored every evaluation")
    test: DataSource | None = Field(None, description="held-out pairs, scored once after training")
    max_source_tokens: int | None = Field(
        None, ge=2, description="text inputs: truncate to this many tokens (default: the encoder's limit)"
    )
    max_target_tokens: int = Field(64, ge=2, description="targets: truncate to this many tokens, eos included")


class TrainingSpec(StrictModel):
    """Optimization."""

    epochs: int = Field(1, ge=1, description="passes over the training data")
    batch_size: int = Field(16, ge=1, description="pairs per worker per step (before accumulation)")
    grad_accum_steps: int = Field(1, ge=1, description="batches whose gradients add up to one optimizer step")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and norms)")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup from 0 to the peak")
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="learning-rate decay after warmup"
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm to this; null = off")
    seed: int = Field(0, description="seeds model init, data order and dropout")
    bf16: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU, which trains in fp32)")
    eval_every_steps: int | None = Field(
        None, ge=1, description="evaluate and checkpoint every N optimizer steps; null = every epoch"
    )
    max_eval_rows: int | None = Field(
        None, ge=1, description="generate for at most this many eval rows per evaluation (loss uses all)"
    )
    log_every_steps: int = Field(10, ge=1, description="print the training loss every N optimizer steps")


class EvaluationSpec(StrictModel):
    """Generation metrics on the eval and test sets."""

    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(strategy="greedy", max_new_tokens=32),
        description="how eval outputs are generated",
    )
    metrics: list[Literal["exact_match", "bleu", "chrf", "rouge"]] = Field(
        default_factory=lambda: ["exact_match", "bleu", "chrf", "rouge"],
        description="generation metrics to compute",
    )
    batch_size: int = Field(32, ge=1, description="rows per generation batch")


class ScalingSpec(StrictModel):
    """Ray Train workers."""

    num_workers: int = Field(1, ge=1, description="training workers (one DDP process each)")
    use_gpu: bool = Field(False, description="one GPU per worker, nccl; false = CPU with gloo")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker")

    def cpu_demand(self) -> CpuDemand:
        """Ray Train's workers hold their CPUs for the whole run; the training split is read
        beside them by Ray Data tasks of 1 CPU (the controller and split coordinator take none)."""
        return CpuDemand(workers=self.num_workers, cpus_per_worker=self.cpus_per_worker, reader_cpus=1,
                         workers_key="scaling.num_workers", cpus_key="scaling.cpus_per_worker")


class RunSpec(StrictModel):
    """Where checkpoints go and how failures are handled."""

    name: str = Field(
        description="run name; a run started again with the same name and storage_path resumes "
        "from its latest checkpoint",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    storage_path: str = path_field(description="checkpoint root: local folder or s3:// prefix")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept (the newest ones)")
    max_failures: int = Field(
        2, ge=-1, description="worker-group restarts (from the latest checkpoint) before failing; -1 = unlimited"
    )


class ExportSpec(StrictModel):
    """The final model."""

    uri: str = path_field(
        description="where the trained combiner goes (HF layout + manifest, loss_curve.png, metrics.json)"
    )
    overwrite: bool = Field(
        False,
        description="replace a combiner already saved at uri by another run; without it such a run "
        "is refused before training (a shipped or earlier model is never replaced by surprise)",
    )


class FinetuneSpec(StrictModel):
    """A fine-tuning job."""

    model: ModelSpec = Field(description="what to train")
    data: DataSpec = Field(description="train / eval / test pairs")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="optimization")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="generation metrics")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Ray Train workers")
    run: RunSpec = Field(description="checkpoints and failure handling")
    export: ExportSpec = Field(description="final model")

    @model_validator(mode="after")
    def _cross_checks(self) -> FinetuneSpec:
        problems = []
        for key in ("train", "eval", "test"):
            source = getattr(self.data, key)
            if source is not None:
                problems += source.source_problems(key=f"data.{key}")
        if self.evaluation.generation.num_return_sequences != 1:
            problems.append(
                "evaluation.generation.num_return_sequences: metrics score one output per row; set it to 1"
            )
        random = self.model.random
        if random is not None:
            if random.encoder_config.get("model_type") is None:
                problems.append("model.random.encoder_config.model_type: required (e.g. vit or bert)")
            if random.decoder_config.get("model_type") is None:
                problems.append("model.random.decoder_config.model_type: required (e.g. gpt2 or bert)")
        if self.model.freeze_encoder and self.model.checkpoint is None and self.model.warm_start is None:
            problems.append(
                "model.freeze_encoder: a random encoder would stay random; train it or warm-start it"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self
