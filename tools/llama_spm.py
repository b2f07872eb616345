"""The sentencepiece trainer settings LLaMA's tokenizer was made with (its `trainer_spec`), shared
by the tools that train small LLaMA-like tokenizers for golden fixtures."""

LLAMA_TRAINER = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "normalization_rule_name": "identity",
    "allow_whitespace_only_pieces": True,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "character_coverage": 0.99995,
    "max_sentencepiece_length": 16,
    "num_threads": 1,
    "minloglevel": 2,
}
