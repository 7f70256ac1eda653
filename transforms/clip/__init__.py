"""ClipScore: open_clip image-text similarity per pair, zero-shot tags, and embeddings saved beside the shards.

One file per concern, as img2dataset keeps its reader, downloader, resizer and writer apart, because
each has readers of its own: the select pass's dedup and decontamination load models and read
embeddings without running the stage, and WriteShards writes embeddings without loading a model.

- ``model``: which model (``ClipSpec``), loading it once per process, its identity (sha256 of the
  weights) and ``ClipScorer``, which embeds images and texts.
- ``store``: the model's identity and the embeddings on disk, beside each candidate shard.
- ``stage``: the Beam stage ``ClipScore``, on Beam's RunInference (see its docstring).
- ``inference``: its ``ModelHandler``, apart because Beam's RunInference module imports torch.

The CLIP rules (thresholds, NSFW and watermark drops) are ``PairRule``s in ``altsieve/filters/clip.py``.
"""
