"""antiphon model core: pure torch codec, LM, sampling, checkpoints, tokenizer."""
