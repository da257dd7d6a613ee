"""What a task kind is: one adapter that owns its modality, CPU preprocessing, model call,
output columns and metrics. The stage builder (stages.py) and the commit protocol
(output/) are the same for every task; adding a task kind touches its adapter and
its spec only (examples to follow: Ray's `ray.data.llm` processor stages).

Rows flow through Ray Data as numpy batches with these columns, from the reader
(pipelines.reading.ROW_SCHEMA): id, shard_key, shard_rows, row_index, source_uri,
source_row, payload, reference, error_stage, error_cause, error_message. A row with a
non-empty error_stage was rejected by an earlier stage; every later stage passes it
through untouched, so it reaches the errors table (nothing is dropped).

Adapters are plain picklable objects (their options only): Ray ships them to CPU
tasks and to the model actors. Heavy imports (torch, transformers) happen inside the
methods that run on workers, never at module import, so the driver stays light.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from ..counters import ModelCounters

if TYPE_CHECKING:
    from combiner_core import Combiner, Preprocessor
    from combiner_core.describe import CheckpointInfo
    from combiner_core.images import FusedImageProcessor

Modality = Literal["text", "image"]


def error_columns(batch: dict[str, np.ndarray]) -> tuple[list[str], list[str], list[str]]:
    """Error stage / cause / message as lists; "" means the row is fine so far."""

    def clean(values: np.ndarray) -> list[str]:
        return [v if isinstance(v, str) else "" for v in values]

    return clean(batch["error_stage"]), clean(batch["error_cause"]), clean(batch["error_message"])


def object_array(values: list) -> np.ndarray:
    """A 1-D object array, even when every element is an array of the same length."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


@functools.lru_cache(maxsize=4)
def cached_preprocessor(model_uri: str, trust_remote_code: bool) -> Preprocessor:
    """One tokenizer / image processor per CPU worker process, not one per batch."""
    from combiner_core import load_preprocessor

    return load_preprocessor(model_uri, trust_remote_code=trust_remote_code)


@dataclass(frozen=True)
class ConfigImagePreprocessor:
    """The image side of a Preprocessor, read from the checkpoint's preprocessor_config.json
    alone (combiner_core.images.fused_image_processor_from_config): what a CPU stage that
    turns image bytes into uint8 pixels needs, without transformers or torch."""

    image_processor: FusedImageProcessor
    modality: ClassVar[Modality] = "image"


@functools.lru_cache(maxsize=4)
def config_image_preprocessor(model_uri: str) -> ConfigImagePreprocessor | None:
    """ConfigImagePreprocessor of `model_uri`, once per process; None when its config is not covered."""
    from combiner_core.images import fused_image_processor_of

    fused = fused_image_processor_of(model_uri)
    return ConfigImagePreprocessor(fused) if fused is not None else None


def stage_preprocessor(task: TaskAdapter, model_uri: str, trust_remote_code: bool) -> Preprocessor | ConfigImagePreprocessor:
    """What the CPU stage preprocesses `task`'s rows with, one per process.

    An image task whose checkpoint's preprocessor_config.json says all its steps gets
    them from that file: a CPU worker then never imports transformers and torch (4-7 s
    of CPU at each worker's start, measured on a 2-core machine, where the model actors
    start at the same time). Any other gets the checkpoint's Preprocessor. The model
    actor checks that both make the same pixels (`check_stage_pixels`).
    """
    if task.modality == "image" and not trust_remote_code:
        light = config_image_preprocessor(model_uri)
        if light is not None:
            return light
    return cached_preprocessor(model_uri, trust_remote_code)


def check_stage_pixels(task: TaskAdapter, model_uri: str, trust_remote_code: bool, image_processor: object) -> None:
    """On a model actor: raise when the pixels the CPU stage makes from the checkpoint's
    config alone (`stage_preprocessor`) would differ from the loaded image processor's
    (a config the reader misjudged), rather than caption the wrong pixels."""
    if task.modality != "image" or trust_remote_code or image_processor is None:
        return
    light = config_image_preprocessor(model_uri)
    if light is None:
        return
    from combiner_core.errors import CombinerError
    from combiner_core.images import fused_image_processor, same_pixels

    loaded = fused_image_processor(image_processor)
    if loaded is None or not same_pixels(light.image_processor, loaded):
        raise CombinerError(
            f"model.uri {model_uri}: the image steps read from its preprocessor_config.json "
            f"({_steps(light.image_processor)}) differ from those of the image processor transformers loads "
            f"({_steps(loaded) if loaded is not None else type(image_processor).__name__}); the CPU stage's pixels "
            "would be wrong. This is a bug in combiner_core.images.fused_image_processor_from_config: please "
            "report it with that file"
        )


def _steps(fused: FusedImageProcessor) -> str:
    size = None if fused.size is None else {k: v for k, v in vars(fused.size).items() if v is not None}
    return (f"{fused.name}: resize {size}, filter {fused.resample}, crop {fused.crop}, "
            f"output {fused.output_size}, draft {fused.draft}")


def preprocess_images(
    batch: dict[str, np.ndarray], pre: Preprocessor, *, max_pixels: int | None = None
) -> dict[str, np.ndarray]:
    """Image bytes -> `pixel_values` as they cross to the model actor.

    uint8 (3, H, W) at the model's input size through combiner_core.images' fused path
    (JPEGs decoded at a reduced scale, one resize; the actor normalizes, see
    `model_pixels`), or the processor's float32 values for a processor that path does
    not cover (said once in the log). A row that fails gets error_stage/cause/message
    from combiner_core's InputError and zero pixels (no actor reads them). Images over
    `max_pixels` (None: combiner_core's default) are refused before their pixels are decoded.
    """
    from combiner_core import InputError
    from combiner_core.images import encode_each
    from combiner_core.preprocess import DEFAULT_MAX_IMAGE_PIXELS

    stages, causes, messages = error_columns(batch)
    payloads = batch["payload"]
    n = len(payloads)
    limit = DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    todo = [i for i in range(n) if not stages[i]]
    encoded = {}
    for i, item in zip(todo, encode_each(pre.image_processor, [payloads[i] for i in todo], max_pixels=limit),
                       strict=True):
        if isinstance(item, InputError):
            stages[i], causes[i], messages[i] = item.stage, item.cause, str(item)
        else:
            encoded[i] = item
    if encoded:
        first = next(iter(encoded.values()))
        pixels = np.zeros((n, *first.shape), dtype=first.dtype)
        pixels[list(encoded)] = np.stack(list(encoded.values()))
    else:
        # An all-error batch: no actor reads these pixels.
        pixels = np.zeros((n, 0), dtype=np.uint8)
    out = {k: v for k, v in batch.items() if k != "payload"}
    out["pixel_values"] = pixels
    out.update(error_stage=object_array(stages), error_cause=object_array(causes), error_message=object_array(messages))
    return out


def model_pixels(combiner: Combiner, batch: dict[str, np.ndarray], rows: list[int]) -> Any:
    """On the model actor: the good `rows`' pixel_values as the encoder reads them, on the
    model's device (uint8 from the fused path is normalized there, on the GPU if any)."""
    from combiner_core.images import model_pixel_values

    stacked = np.stack([batch["pixel_values"][i] for i in rows])
    return model_pixel_values(combiner.image_processor, stacked, device=combiner.model.device)


def preprocess_texts(
    batch: dict[str, np.ndarray], pre: Preprocessor, *, truncation: bool, template: str | None = None
) -> dict[str, np.ndarray]:
    """Text bytes -> UTF-8 check -> optional template -> tokenizer -> `input_ids`.

    Also `input_tokens` (length before truncation) and `truncated`. Over-long texts are
    cut to the encoder's limit, or rejected (cause too_long) when truncation is off.
    """
    from combiner_core import InputError, text_from_bytes, tokenize_text

    stages, causes, messages = error_columns(batch)
    payloads = batch["payload"]
    n = len(payloads)
    ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    in_tokens = np.full(n, -1, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    for i in range(n):
        if stages[i]:
            continue
        try:
            text: str | bytes = bytes(payloads[i])
            if template is not None:
                text = text_from_bytes(text)
                if text.strip():
                    text = template.format(text=text)
            tok = tokenize_text(pre.tokenizer, text, max_tokens=pre.max_input_tokens, truncation=truncation)
        except InputError as exc:
            stages[i], causes[i], messages[i] = exc.stage, exc.cause, str(exc)
            continue
        ids[i] = np.asarray(tok.input_ids, dtype=np.int64)
        in_tokens[i], truncated[i] = tok.original_num_tokens, tok.truncated
    out = {k: v for k, v in batch.items() if k != "payload"}
    out.update(input_ids=object_array(ids), input_tokens=in_tokens, truncated=truncated)
    out.update(error_stage=object_array(stages), error_cause=object_array(causes), error_message=object_array(messages))
    return out


class TaskAdapter(ABC):
    """One task kind (caption, summarize, label...): everything that differs between them.

    Subclasses are dataclasses of their options. `name` and `modality` are class
    constants: the job refuses a model whose modality differs.
    """

    name: ClassVar[str]
    # What the model must read; None: either (the model's own preprocessor decides).
    modality: ClassVar[Modality | None]
    # The output column a person reads first, and its score (reports and _gallery.html).
    display_columns: ClassVar[tuple[str, str]] = ("text", "score")
    # Image tasks: input.max_pixels (a dataclass field there); None: combiner_core's default.
    max_pixels: int | None = None

    @abstractmethod
    def output_fields(self) -> list[pa.Field]:
        """The task's own output columns, between the row's source and its lineage."""

    @abstractmethod
    def params_digest_source(self) -> Any:
        """What decides this task's outputs besides input and model (hashed into lineage)."""

    def preprocess(self, batch: dict[str, np.ndarray], pre: Preprocessor) -> dict[str, np.ndarray]:
        """CPU stage: raw payloads -> model inputs (decode, tokenize, image processor)."""
        if self.modality == "image":
            return preprocess_images(batch, pre, max_pixels=self.max_pixels)
        return preprocess_texts(batch, pre, truncation=True)

    def model_problems(self, model_uri: str, info: CheckpointInfo, *, trust_remote_code: bool = False) -> list[str]:
        """On the driver, before any actor starts: what of this task's options the model
        cannot serve (each problem naming its YAML key). None by default."""
        return []

    @abstractmethod
    def setup(self, combiner: Combiner, *, quantize: str | None = None) -> Any:
        """On the model actor, once: the engine `run` uses (a GenerationEngine, a LabelScorer);
        quantize: model.quantize of the spec ("int8" or None)."""

    @abstractmethod
    def run(self, engine: Any, batch: dict[str, np.ndarray], rows: list[int]) -> dict[str, list]:
        """On the model actor: outputs for the good `rows` of `batch`, one list per output field."""

    def counters(self, engine: Any) -> ModelCounters:
        """The engine's (or scorer's) cumulative work counters (the actor sends their change per batch)."""
        return ModelCounters()

    def metric_sums(self, table: pa.Table) -> dict[str, float]:
        """Additive sums over a committed shard's ok rows (with their `reference`)."""
        return {}

    def metrics(self, sums: dict[str, float]) -> dict[str, Any]:
        """Final job metrics from the sums of every committed shard."""
        return {}
