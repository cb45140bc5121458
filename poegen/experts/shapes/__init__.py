"""The embedded shapes world: scenes, renderer, checker, tokenizer, prior and VLM experts."""
