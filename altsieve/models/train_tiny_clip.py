"""Train altsieve's tiny CLIP: a TEST model for the demo and the tests, never for real data.

Real CLIP weights cannot be fetched on the project's machines, yet the CLIP stage must be tested on
a model whose scores mean something. So this script trains a small open_clip custom config
(``altsieve-tiny-clip.json``: ViT of 3 layers at 64 px, patch 16, text tower of width 64; 3.96M parameters,
7.9 MB as fp16, 6.3 MB of them the 49,408-row token table that open_clip's tokenizer needs) on
the test corpus's own kind of scenes: shapes, colours, positions, counts and backgrounds drawn by
``altsieve.testcorpus.scenes.draw_scene`` at the corpus's 320x240, with true captions in English
and Chinese from ``caption_for``. It knows nothing else: a photo of a dog gets a meaningless score.

    .venv/bin/python -m altsieve.models.train_tiny_clip   # writes altsieve-tiny-clip.safetensors beside this file

Deterministic: every random choice comes from the seeds below (scene pool, batch order, caption
templates, torch.manual_seed), torch runs with deterministic algorithms on a fixed thread count,
and the pool is rendered in fixed order; the same CPU kind and thread count give the same bytes
(``--check`` retrains and compares the sha256). It takes about 3 minutes on 2 CPU cores.

The images are seen the way the pipeline shows them to the model: the ingest pass resizes the
320x240 image (``border`` mode by default: 256x192 padded with white to 256x256; ``center_crop``
and ``keep_ratio`` give a centre crop), then the model's preprocess resizes to 64 px and crops the
centre. Each pooled scene is rendered in one of those two views. Batches are one language each,
so that the text tower runs on the batch's longest caption only (``transforms.clip.model.encode_text_trimmed``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "altsieve-tiny-clip"
HERE = Path(__file__).resolve().parent
CONFIG_PATH = HERE / f"{MODEL_NAME}.json"
# safetensors, not torch.save: the same tensors give the same bytes (torch.save adds a random serialization id),
# and loading it runs no pickle. open_clip reads it as it is (its load_state_dict knows the suffix).
CHECKPOINT_PATH = HERE / f"{MODEL_NAME}.safetensors"
REPORT_PATH = HERE / f"{MODEL_NAME}.train.json"
CORPUS_SIZE = (320, 240)  # the test corpus's image size (TestCorpus.image_size)
PIPELINE_SIZE = 256  # the default recipe's image.image_size
TRAIN_LANGUAGES = ("en", "zh")
POOL_SEED = 1
EVAL_SEED = 20_261_125  # held out: no training scene comes from this stream
TORCH_SEED = 0


def render_view(job: tuple[Any, str, bool, int]) -> np.ndarray:
    """One scene as the model sees it after the pipeline and the model's preprocess: uint8 [S, S, 3]."""
    from PIL import Image

    from altsieve.testcorpus.scenes import draw_scene

    spec, view, texture, size = job
    image = draw_scene(spec, *CORPUS_SIZE, texture=texture)
    if view == "border":  # ingest's default: fit the longer side, pad with white
        width, height = CORPUS_SIZE
        scale = PIPELINE_SIZE / max(width, height)
        fitted = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BOX)
        canvas = Image.new("RGB", (PIPELINE_SIZE, PIPELINE_SIZE), (255, 255, 255))
        canvas.paste(fitted, ((PIPELINE_SIZE - fitted.width) // 2, (PIPELINE_SIZE - fitted.height) // 2))
        image = canvas
    # The model's own preprocess (open_clip: Resize shorter side, bicubic; CenterCrop).
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                         Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def scene_jobs(n: int, seed: int, size: int) -> list[tuple[Any, str, bool, int]]:
    from altsieve.testcorpus.scenes import random_scene

    rng = random.Random(seed)
    return [(random_scene(rng), rng.choice(("border", "crop")), rng.random() < 0.3, size) for _ in range(n)]


def render_pool(jobs: list[tuple[Any, str, bool, int]], workers: int) -> np.ndarray:
    if workers <= 1:
        return np.stack([render_view(job) for job in jobs])
    with multiprocessing.get_context("fork").Pool(workers) as pool:  # imap keeps the order: deterministic
        return np.stack(list(pool.imap(render_view, jobs, chunksize=64)))


def caption_tokens(specs: list[Any], tokenizer: Any) -> dict[str, Any]:
    """language -> int tensor [n_scenes, n_templates, context]: every template's caption of every scene."""
    import torch

    from altsieve.testcorpus.scenes import all_captions

    out = {}
    for language in TRAIN_LANGUAGES:
        captions = [all_captions(spec, language) for spec in specs]
        flat = tokenizer([c for per_scene in captions for c in per_scene])
        out[language] = flat.reshape(len(specs), len(captions[0]), -1).to(torch.int32)
    return out


def load_tiny_model() -> tuple[Any, Any, Any]:
    """A fresh (random) model of the tiny config, its preprocess and tokenizer."""
    import open_clip

    open_clip.add_model_config(CONFIG_PATH)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


def normalise_images(pixels: Any) -> Any:
    """uint8 [B, S, S, 3] -> the float tensor the model's preprocess would give (OpenAI mean/std)."""
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.as_tensor(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name

    from altsieve.transforms.clip.model import encode_text_trimmed

    torch.manual_seed(TORCH_SEED)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    model, _, tokenizer = load_tiny_model()
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    started = time.time()
    jobs = scene_jobs(args.pool, POOL_SEED, size)
    pool = render_pool(jobs, args.workers)
    tokens = caption_tokens([job[0] for job in jobs], tokenizer)
    print(f"pool: {len(jobs)} scenes rendered in {time.time() - started:.1f} s", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    generator = torch.Generator().manual_seed(TORCH_SEED)
    model.train()
    losses = []
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        language = TRAIN_LANGUAGES[step % len(TRAIN_LANGUAGES)]
        index = torch.randperm(len(jobs), generator=generator)[: args.batch]
        template = torch.randint(0, tokens[language].shape[1], (args.batch,), generator=generator)
        text = tokens[language][index, template].long()
        images = normalise_images(pool[index.numpy()])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(encode_text_trimmed(model, text), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        if args.soft_targets:
            # Scenes alike in all a caption says may share a batch: caption j is as true of image i as of its
            # own image when image i's caption from the same template is the same text. Each true caption is a
            # positive (soft targets), not a negative that would teach the model to tell equal things apart.
            alternatives = tokens[language][index][:, template]  # [i, j, L]: image i's caption, template of j
            true = (alternatives == tokens[language][index, template][None]).all(dim=-1).float()
            loss = 0.5 * (F.cross_entropy(logits, true / true.sum(dim=1, keepdim=True))
                          + F.cross_entropy(logits.T, true.T / true.T.sum(dim=1, keepdim=True)))
        else:
            labels = torch.arange(len(index))
            loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == args.steps - 1:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"step {step:4d}  loss {recent:.3f}  lr {lr:.2e}  {time.time() - started:.0f} s", flush=True)
    model.eval()
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(args.out))
    return {"train_seconds": round(time.time() - started, 1), "final_loss": round(sum(losses[-50:]) / 50, 4)}


def evaluate(checkpoint: Path, n_scenes: int, seed: int) -> dict[str, Any]:
    """Held-out scenes (another seed), through the pipeline's own scorer: matching vs mismatched captions."""
    from altsieve.testcorpus.scenes import caption_for, mismatched_caption
    from altsieve.transforms.clip.model import ClipScorer, ClipSpec

    scorer = ClipScorer.load(ClipSpec(model=MODEL_NAME, pretrained=str(checkpoint)))
    jobs = scene_jobs(n_scenes, seed, scorer.image_size)
    rng = random.Random(seed + 1)
    pixels = render_pool(jobs, 1)
    result: dict[str, Any] = {"scenes": n_scenes, "seed": seed}
    for language in TRAIN_LANGUAGES:
        matching = [caption_for(job[0], language, rng) for job in jobs]
        wrong = [mismatched_caption(job[0], language, rng) for job in jobs]
        image = scorer.embed_pixels(pixels)
        good = (image * scorer.embed_texts(matching)).sum(axis=1)
        bad = (image * scorer.embed_texts(wrong)).sum(axis=1)
        result[language] = {
            "match_beats_mismatch": round(float((good > bad).mean()), 4),
            "match_score_p05_p50": [round(float(np.quantile(good, q)), 4) for q in (0.05, 0.5)],
            "mismatch_score_p50_p95": [round(float(np.quantile(bad, q)), 4) for q in (0.5, 0.95)],
        }
    return result


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=CHECKPOINT_PATH)
    parser.add_argument("--steps", type=int, default=360)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--pool", type=int, default=10_000, help="distinct training scenes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the scene pool")
    parser.add_argument("--soft-targets", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--eval-scenes", type=int, default=1000)
    parser.add_argument("--check", action="store_true", help="retrain into a temporary file and compare the sha256")
    args = parser.parse_args(argv)
    if args.check:
        import tempfile

        reference = args.out
        with tempfile.TemporaryDirectory() as folder:
            args.out = Path(folder) / "retrained.safetensors"
            train(args)
            same = sha256_of(args.out) == sha256_of(reference)
        print("identical to", reference if same else f"DIFFERENT from {reference}")
        return 0 if same else 1
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items() if k != "check"}}
    report["args"]["out"] = args.out.name
    report.update(train(args))
    report["bytes"] = args.out.stat().st_size
    report["sha256"] = sha256_of(args.out)
    report["held_out"] = evaluate(args.out, args.eval_scenes, EVAL_SEED)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.out == CHECKPOINT_PATH:
        REPORT_PATH.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
