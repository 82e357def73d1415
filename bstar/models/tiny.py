"""The tiny default policy: a character tokenizer and a from-scratch Llama (~1M parameters).

Both are saved with `save_pretrained`, so every later stage loads them through
`AutoTokenizer` / `AutoModelForCausalLM` exactly like a hub checkpoint. Nothing is downloaded.

    from bstar.models.tiny import build_tiny_policy
    path = build_tiny_policy("runs/tiny-init")          # hidden=128, layers=4: ~0.8M parameters
"""

from __future__ import annotations

import string
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
# Every printable ASCII character (space included) is one token; anything else maps to <unk>.
CHARS = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"] + ["\n"]

# Named sizes for `build_tiny_policy(size=...)`; explicit keyword arguments override them.
SIZES = {
    "tiny": dict(hidden=128, layers=4, heads=4, intermediate=384),  # ~0.8M
    "small": dict(hidden=192, layers=6, heads=6, intermediate=512),  # ~2.7M
}


def build_char_tokenizer(model_max_length: int = 512):
    """A character-level `PreTrainedTokenizerFast`: one token per character, BOS prepended."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def tiny_config(
    vocab_size: int,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 256,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attention_dropout=0.0,
    )


def build_tiny_policy(
    out_dir: str | Path,
    *,
    size: str = "tiny",
    hidden: int | None = None,
    layers: int | None = None,
    heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 256,
    seed: int = 0,
) -> str:
    """Build, randomly initialise (seeded) and save the tiny policy + tokenizer; returns `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from bstar.models.loading import quiet_transformers

    quiet_transformers()

    dims = dict(SIZES[size])
    for key, value in dict(hidden=hidden, layers=layers, heads=heads, intermediate=intermediate).items():
        if value is not None:
            dims[key] = value
    if dims["hidden"] % dims["heads"]:
        raise ValueError(f"hidden={dims['hidden']} must be divisible by heads={dims['heads']}")
    tokenizer = build_char_tokenizer(model_max_length=max_positions)
    config = tiny_config(
        len(tokenizer),
        max_positions=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )
    cpu_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(cpu_state)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
