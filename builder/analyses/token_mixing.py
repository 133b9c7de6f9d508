"""Last-layer token mixing (paper section 4, Table 1, Figure 6).

(a) Isolating CLS: the blocks before the last run on the patch tokens alone; the prefix tokens
    (CLS, and distillation / register tokens where present) run alone through the same blocks — a
    value that does not depend on the image — and are inserted before the last block.
(b) Patch average / maximum: the classification head (after the final norm), trained on CLS, applied
    to each patch token of the last layer without fine-tuning; accuracy averaged over patch positions
    and that of the best position.
(c) The per-position accuracy as a heat map on the patch grid.
The same head applied to the tokens after every earlier block shows where globalization happens.
"""
from __future__ import annotations

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from atlas.format import AtlasError

from .common import AnalysisJob, check, eval_loader, labelled, missing_labels, percent

NAME = "token-mixing"


def applies(lm, job: AnalysisJob) -> str | None:
    """None if the analysis applies to the model and job, else why not."""
    m = lm.model
    if not isinstance(m, VisionTransformer):
        return f"{type(m).__name__} is not a timm VisionTransformer (token mixing needs its blocks and head)"
    if not m.has_class_token:
        return "the model has no CLS token"
    return missing_labels(job.index)


def token_logits(m: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The classification head applied to every token: [B, N, C] -> [B, N, classes]."""
    return m.head(m.fc_norm(m.norm(tokens)))


def embed(m: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Tokens entering the first block (patches, position embeddings, prefix tokens)."""
    return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


def isolated_cls_logits(m: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the CLS token when it meets the patches only in the last block."""
    prefix = m.num_prefix_tokens
    alone = tokens[:1, :prefix]
    patches = tokens[:, prefix:]
    for block in m.blocks[:-1]:
        alone, patches = block(alone), block(patches)
    last = m.blocks[-1](torch.cat([alone.expand(len(tokens), -1, -1), patches], dim=1))
    return token_logits(m, last[:, :1])[:, 0]


@torch.no_grad()
def run(lm, job: AnalysisJob, device: torch.device) -> dict:
    """Accuracies of CLS, isolated CLS and each patch position after every block."""
    check(NAME, job.name, applies(lm, job))
    index = labelled(lm, job.index, job.limit)
    m = lm.model.to(device)
    prefix, depth = m.num_prefix_tokens, len(m.blocks)
    grid = m.patch_embed.grid_size
    cls_correct = np.zeros(depth)
    patch_correct = np.zeros((depth, grid[0] * grid[1]))
    isolated = full = n = 0
    for ids, x, _ in eval_loader(lm, index, job):
        if x is None:
            continue
        labels = torch.from_numpy(index.labels[ids.numpy()]).to(device)
        tokens = embed(m, x.to(device))
        h = tokens
        for layer, block in enumerate(m.blocks):
            h = block(h)
            hit = token_logits(m, h).argmax(-1) == labels[:, None]       # [B, N]
            cls_correct[layer] += hit[:, 0].sum().item()
            patch_correct[layer] += hit[:, prefix:].sum(0).cpu().numpy()
        full += (m(x.to(device)).argmax(-1) == labels).sum().item()
        isolated += (isolated_cls_logits(m, tokens).argmax(-1) == labels).sum().item()
        n += len(ids)
    if not n:
        raise AtlasError(f"{NAME}: no image could be read")
    per_layer = patch_correct / n
    last = per_layer[-1]
    best = int(last.argmax())
    return {
        "images": n, "accuracy": full / n, "isolated_cls_accuracy": isolated / n,
        "patch_average": float(last.mean()), "patch_max": float(last.max()),
        "patch_max_position": [best // grid[1], best % grid[1]],
        "heatmap": last.reshape(grid).tolist(),
        "layers": [{"layer": i, "cls": cls_correct[i] / n, "patch_average": float(per_layer[i].mean()),
                    "patch_max": float(per_layer[i].max())} for i in range(depth)],
    }


def describe(results: dict) -> dict:
    """Title, text, table and charts for every model's results."""
    rows = [[model, percent(r["accuracy"]), percent(r["isolated_cls_accuracy"]), percent(r["patch_average"]),
             percent(r["patch_max"]), r["images"]] for model, r in results.items()]
    charts = []
    for model, r in results.items():
        charts.append({"type": "heatmap", "values": r["heatmap"], "title": f"{model}: accuracy of the head on each patch",
                       "caption": f"{model}: accuracy when the CLS head classifies from a single patch token of the last "
                                  "layer, per position on the patch grid (Figure 6)."})
        charts.append({"type": "lines", "title": f"{model}: accuracy of the head on the tokens after each block",
                       "x_label": "block", "y_label": "accuracy", "y_range": [0, 1],
                       "series": {"CLS token": [[layer["layer"], layer["cls"]] for layer in r["layers"]],
                                  "patch average": [[layer["layer"], layer["patch_average"]] for layer in r["layers"]],
                                  "best patch": [[layer["layer"], layer["patch_max"]] for layer in r["layers"]]},
                       "caption": f"{model}: where globalization happens. The head, trained on the last block's CLS "
                                  "token, reads each block's tokens; patch tokens become classifiable only at the end."})
    return {
        "title": "Last-layer token mixing",
        "summary": "Does the CLS token gather global information throughout the network, or only at the end? "
                   "The paper (ViT-B/16 on ImageNet) finds 78.61% accuracy when CLS meets the patches only in the "
                   "last block, 75.75% when the head reads a single patch (averaged over positions) and 80.16% for "
                   "the best position: the last layer mixes tokens like a learned global pooling.",
        "method": "Isolated CLS: blocks before the last run on patch tokens only; the prefix tokens run alone "
                  "(their value does not depend on the image) and join the patches for the last block. Patch "
                  "average/maximum: the model's own final norm and head applied to each patch token, no "
                  "fine-tuning; average over positions and best position. Labels from the image folder.",
        "tables": [{"caption": "Accuracy (top-1)", "columns": ["model", "CLS (normal)", "isolated CLS",
                                                                 "patch average", "patch maximum", "images"],
                    "rows": rows}],
        "charts": charts,
    }
