"""Typed errors a user of combiner_core can hit.

Each error says what happened, where, and what to do. Pipelines catch
`InputError` subclasses per row and route the row to the errors table with
`stage` and `cause`, so those two attributes are part of the contract.
"""

from __future__ import annotations


class CombinerError(Exception):
    """Base class of every error combiner_core raises on purpose."""


# --- model building and loading -------------------------------------------------


class CheckpointNotFoundError(CombinerError, FileNotFoundError):
    """A model, tokenizer or image-processor location does not exist."""


class UnsupportedDecoderError(CombinerError, ValueError):
    """The decoder checkpoint cannot cross-attend to an encoder."""


class UnsupportedEncoderError(CombinerError, ValueError):
    """The encoder checkpoint cannot serve as a combiner encoder."""


class NotACombinerError(CombinerError, ValueError):
    """A checkpoint folder holds a model that is not an encoder-decoder."""


class MissingTokenizerError(CombinerError, FileNotFoundError):
    """No tokenizer could be found for a combiner."""


class MissingImageProcessorError(CombinerError, FileNotFoundError):
    """A vision combiner has no image processor."""


class UnsafeCheckpointError(CombinerError, PermissionError):
    """A checkpoint needs pickle or remote code, and the caller did not allow it."""


class ManifestMismatchError(CombinerError, ValueError):
    """A saved file's sha256 differs from the one in the combiner manifest."""


class SpecialTokenError(CombinerError, ValueError):
    """decoder_start_token_id / pad_token_id / eos_token_id cannot be determined."""


# --- arguments -----------------------------------------------------------------------


class ParameterError(CombinerError, ValueError):
    """Generation parameters, a label set or a dtype that cannot work; names each problem."""


class ModalityError(CombinerError, ValueError):
    """Images given to a text combiner, or text to an image combiner."""


# --- per-row input errors ----------------------------------------------------------


class InputError(CombinerError, ValueError):
    """A single input row cannot be processed.

    Attributes:
        stage: the processing step that failed ("decode", "tokenize", ...).
        cause: a short machine-readable cause ("empty_image", "corrupt_image", ...).
    """

    stage: str = "preprocess"
    cause: str = "invalid_input"

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        if cause is not None:
            self.cause = cause


class ImageDecodeError(InputError):
    """Image bytes are empty, corrupt, of an unknown format, or too large."""

    stage = "decode"
    cause = "corrupt_image"


class TextInputError(InputError):
    """Text is empty, whitespace-only, not UTF-8, or too long with truncation off."""

    stage = "tokenize"
    cause = "invalid_text"
