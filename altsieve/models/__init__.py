"""Model files shipped with altsieve: the tiny CLIP TEST model (config, fp16 checkpoint, training script)."""
