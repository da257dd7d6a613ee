"""Generation parameters: a plain pydantic model, importable without torch or transformers.

Job specs validate against it on a driver that never runs a model, so this module
imports only pydantic (transformers is imported when a GenerationConfig is built).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ParameterError

if TYPE_CHECKING:
    from transformers import GenerationConfig


class GenerationParams(BaseModel):
    """How to generate. Field names follow transformers' GenerationConfig."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["greedy", "beam", "sample"] = Field(
        "greedy", description="greedy decoding, beam search, or sampling"
    )
    max_new_tokens: int = Field(64, ge=1, le=4096, description="most tokens generated per sequence")
    min_new_tokens: int = Field(0, ge=0, description="eos is suppressed until this many tokens exist")
    num_beams: int = Field(4, ge=1, le=64, description="beams for strategy=beam (ignored otherwise)")
    length_penalty: float = Field(
        1.0, description="beam scores are divided by length**length_penalty; >1 favours longer outputs"
    )
    early_stopping: bool | Literal["never"] = Field(
        False, description="beam search stops when num_beams finished candidates exist (True), "
        "by a heuristic (False), or only when no better candidate is possible ('never')"
    )
    no_repeat_ngram_size: int = Field(0, ge=0, description="forbid repeating any n-gram of this size; 0 = off")
    repetition_penalty: float = Field(1.0, gt=0, description="penalize tokens already generated; 1.0 = off")
    temperature: float = Field(1.0, gt=0, description="softmax temperature for strategy=sample")
    top_k: int = Field(50, ge=0, description="sample from the k most likely tokens; 0 = off")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1.0 = off")
    seed: int | None = Field(None, description="seeds sampling; the same seed and batch give the same outputs")
    num_return_sequences: int = Field(1, ge=1, le=64, description="candidates returned per input")

    @model_validator(mode="after")
    def _check(self) -> GenerationParams:
        problems = []
        if self.strategy == "beam" and self.num_beams < 2:
            problems.append(f"num_beams={self.num_beams}: beam search needs num_beams >= 2 (or strategy=greedy)")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            problems.append(
                f"num_return_sequences={self.num_return_sequences} > num_beams={self.num_beams}: "
                "beam search returns at most num_beams candidates; raise num_beams"
            )
        if self.strategy == "greedy" and self.num_return_sequences > 1:
            problems.append(
                f"num_return_sequences={self.num_return_sequences} with strategy=greedy would repeat "
                "one output; use strategy=beam or strategy=sample"
            )
        if self.min_new_tokens > self.max_new_tokens:
            problems.append(
                f"min_new_tokens={self.min_new_tokens} > max_new_tokens={self.max_new_tokens}; lower it"
            )
        if problems:
            raise ParameterError("; ".join(problems))
        return self

    def to_generation_config(self, base: GenerationConfig) -> GenerationConfig:
        """A GenerationConfig carrying the model's special ids and these parameters."""
        from transformers import GenerationConfig

        values = dict(
            decoder_start_token_id=base.decoder_start_token_id,
            bos_token_id=base.bos_token_id,
            pad_token_id=base.pad_token_id,
            eos_token_id=base.eos_token_id,
            forced_bos_token_id=getattr(base, "forced_bos_token_id", None),
            forced_eos_token_id=getattr(base, "forced_eos_token_id", None),
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            num_return_sequences=self.num_return_sequences,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            use_cache=True,
            return_dict_in_generate=True,
            output_scores=True,
        )
        if self.strategy == "beam":
            values.update(
                num_beams=self.num_beams, length_penalty=self.length_penalty, early_stopping=self.early_stopping
            )
        elif self.strategy == "sample":
            values.update(
                do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p
            )
        # Built in one go: GenerationConfig validates its arguments together.
        return GenerationConfig(**values)
