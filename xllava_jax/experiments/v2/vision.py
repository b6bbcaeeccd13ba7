"""Study v2's frozen vision tower: a small CLIP ViT pretrained once (world seed) so that **every** patch token of
the hidden state the projector reads (HF layer -2) classifies the scene's colour, shape and position (one head
per attribute, shared by the tokens), on freshly drawn scenes of all 48 triples; like CLIP's patch tokens, each
image token then carries the scene's content, not only the patch under it (DESIGN.md, amendment A1); saved as an HF CLIPVisionModel directory that stage 1 loads with `init.clip_dir` (both papers
freeze a pretrained CLIP). PyTorch + transformers, as the reference implementation of CLIP in this project."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import ml_collections
import numpy as np

from xllava_jax.data.images import preprocess
from xllava_jax.data.synthetic import COLORS, POSITIONS, SHAPES, draw
from xllava_jax.experiments import world as v1

ATTRIBUTES = (("color", tuple(COLORS)), ("shape", tuple(SHAPES)), ("position", tuple(POSITIONS)))
DONE = "probe.json"


def default_vision() -> ml_collections.ConfigDict:
    """The ViT and its pretraining."""
    v = ml_collections.ConfigDict()
    v.hidden = 64  # width
    v.layers = 3  # encoder layers (the projector reads layer -2: the output of the second)
    v.heads = 4
    v.patch = 12  # 48 px / 12 = 4 x 4 = 16 image tokens, as v1
    v.images = 3000  # freshly drawn pretraining scenes (all 48 triples)
    v.steps = 400  # Adam steps
    v.batch = 64
    v.lr = 2e-3
    v.probe_images = 480  # fresh scenes for the recorded probe accuracy
    return v


def labelled_scenes(count: int, seed: int, w: ml_collections.ConfigDict):
    """(pixels [N, 3, S, S] CLIP-normalised, labels [N, 3] colour/shape/position indices) of fresh scenes."""
    triples = sorted(itertools.product(COLORS, SHAPES, POSITIONS))
    scenes = v1.scenes(count, seed, triples, tuple(w.scale), w.jitter)
    pixels = np.stack([preprocess(draw(s, w.image_size), w.image_size) for s in scenes]).transpose(0, 3, 1, 2)
    labels = np.array([[names.index(getattr(s, attr)) for attr, names in ATTRIBUTES] for s in scenes])
    return pixels.astype(np.float32), labels


def features(model, pixels):
    """The patch tokens of hidden layer -2, [N, tokens, hidden] (what the LLaVA projector reads)."""
    out = model(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:]


def token_loss(logits, labels):
    """Cross-entropy of every token's logits [N, T, C] against the scene's label [N]."""
    import torch
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(logits.shape[1]))


def pretrain_vit(out_dir: str | Path, w: ml_collections.ConfigDict, v: ml_collections.ConfigDict | None = None) -> dict:
    """Pretrain (or reuse) the ViT under `out_dir`; returns the probe accuracies on fresh scenes."""
    out_dir = Path(out_dir)
    if (out_dir / DONE).exists():
        return json.loads((out_dir / DONE).read_text())
    try:
        import torch
    except ImportError as e:
        raise ImportError("study v2 pretrains its ViT with PyTorch: pip install -e '.[test]' (torch)") from e
    from transformers import CLIPVisionConfig, CLIPVisionModel
    v = v or default_vision()
    torch.manual_seed(w.seed)
    cfg = CLIPVisionConfig(hidden_size=v.hidden, intermediate_size=2 * v.hidden, num_hidden_layers=v.layers,
                           num_attention_heads=v.heads, image_size=w.image_size, patch_size=v.patch,
                           hidden_act="quick_gelu", projection_dim=v.hidden)
    model = CLIPVisionModel(cfg)
    heads = torch.nn.ModuleList([torch.nn.Linear(v.hidden, len(names)) for _, names in ATTRIBUTES])
    pixels, labels = (torch.from_numpy(a) for a in labelled_scenes(v.images, 10_000 + w.seed, w))
    opt = torch.optim.Adam([*model.parameters(), *heads.parameters()], lr=v.lr)
    rng = np.random.default_rng(w.seed)
    for _ in range(v.steps):
        idx = torch.from_numpy(rng.choice(len(pixels), v.batch, replace=False))
        f = features(model, pixels[idx])
        loss = sum(token_loss(h(f), labels[idx, k]) for k, h in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe_x, probe_y = (torch.from_numpy(a) for a in labelled_scenes(v.probe_images, 20_000 + w.seed, w))
    with torch.no_grad():
        f = features(model, probe_x)
        # accuracy over every (scene, token): the attribute is readable from each image token alone
        probe = {attr: float((h(f).argmax(-1) == probe_y[:, k, None]).float().mean())
                 for k, ((attr, _), h) in enumerate(zip(ATTRIBUTES, heads))}
    model.save_pretrained(out_dir)
    probe["final_loss"] = float(loss.detach())
    (out_dir / DONE).write_text(json.dumps(probe, indent=2))
    return probe
