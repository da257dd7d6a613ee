"""Tiny deterministic models and tokenizers for tests (no hub access)."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    DeiTConfig,
    GPT2Config,
    PreTrainedTokenizerFast,
    SwinConfig,
    TrOCRConfig,
    ViTConfig,
)
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from combiner_core.vocab import build_word_tokenizer

WORDS = (
    "a the red green blue yellow small large circle square triangle on left right top "
    "bottom of image shows summary document text cat dog sat mat and is in with"
).split()

# initializer_range 1.0 (BERT's default is 0.02): with the default, a random tiny
# model emits one token for every input, and near-tied logits let float noise pick
# the argmax. Large weights give input-dependent outputs with clear margins, so
# parity tests compare something.
INIT = 1.0


def bert_tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(WORDS, model_max_length=64)


def gpt2_style_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 conventions: one <|endoftext|> token for bos and eos, no pad token."""
    tok = build_word_tokenizer(WORDS, model_max_length=64)
    tok.add_special_tokens({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
    tok.pad_token = None
    return tok


def bert_config(tokenizer, **overrides) -> BertConfig:
    values = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id or 0,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=INIT,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


def gpt2_config(tokenizer, **overrides) -> GPT2Config:
    values = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        n_embd=48,  # differs from the encoders' 32: exercises enc_to_dec_proj
        n_layer=2,
        n_head=4,
        n_positions=64,
        initializer_range=INIT,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    values.update(overrides)
    return GPT2Config(**values)


def trocr_config(tokenizer) -> TrOCRConfig:
    return TrOCRConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        d_model=32,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        init_std=INIT,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )


def vit_config(**overrides) -> ViTConfig:
    values = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        initializer_range=INIT,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return ViTConfig(**values)


def swin_config() -> SwinConfig:
    # hidden_size = embed_dim * 2**(stages-1) = 32, like the other tiny encoders.
    return SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
        initializer_range=INIT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0,
    )


def deit_config() -> DeiTConfig:
    return DeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, initializer_range=INIT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def vit_image_processor() -> ViTImageProcessorPil:
    return ViTImageProcessorPil(size={"height": 32, "width": 32})


def save_pretrained_encoder(path: Path, config, *, tokenizer=None, image_processor=None) -> Path:
    """Write a random encoder checkpoint the way the hub stores one."""
    model = AutoModel.from_config(config)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if image_processor is not None:
        image_processor.save_pretrained(path)
    return path


def save_pretrained_decoder(path: Path, config, *, tokenizer) -> Path:
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
