"""Inv-Ids measured on the held-out training identities: their query/gallery split, the metrics and the match
threshold calibrated there, and the finished Inv-Id they pick (settings are chosen on validation, never on test)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from genreid.service.core.evaluation import Evaluator
from genreid.service.core.similarity import code_distances
from genreid.training.data.cache import ImageSet, query_gallery_split
from genreid.training.stages.context import StageContext, to_device_floats


@torch.no_grad()
def embed(model: torch.nn.Module, data: ImageSet, device: torch.device, batch: int = 256) -> np.ndarray:
    """The codes of every crop of `data`, by `model` in eval mode."""
    model.eval()
    codes = [model(to_device_floats(data.images[i:i + batch], device)).float().cpu().numpy()
             for i in range(0, len(data), batch)]
    return np.concatenate(codes)


def saved_inv_id(ctx: StageContext, saved: dict) -> nn.Module:
    """A finished Inv-Id (its saved result: a member's or a joined run's mean) as a network on the run's device."""
    model = ctx.new_inv_id().to(ctx.runtime.device)
    model.load_state_dict(saved["model"])
    return model


def inv_id_evaluator(ctx: StageContext, saved: dict, query: ImageSet, gallery: ImageSet) -> Evaluator[ImageSet]:
    """A finished Inv-Id (its saved result) scoring `query` against `gallery` from its torch weights."""
    return Evaluator(partial(embed, saved_inv_id(ctx, saved), device=ctx.runtime.device), query, gallery)


def validation_evaluator(val: ImageSet, seed: int, embed: Callable[[ImageSet], np.ndarray]) -> Evaluator[ImageSet]:
    """The held-out identities as a retrieval split (one query per person and camera, the rest gallery): what
    the Inv-Id variant, the match threshold and the re-ranking parameters are chosen on."""
    query, gallery = query_gallery_split(val, seed)
    return Evaluator(embed, val.subset(query), val.subset(gallery))


def validate_inv_id(model: torch.nn.Module, val: ImageSet, device: torch.device, seed: int) -> dict[str, float]:
    """Standard-protocol metrics on the held-out identities, and the distance at 1% false-match rate."""
    evaluator = validation_evaluator(val, seed, lambda split: embed(model, split, device))
    metrics = evaluator.metrics().as_dict()
    codes = np.concatenate([evaluator.q_codes, evaluator.g_codes])
    person_ids = np.concatenate([evaluator.query.person_ids, evaluator.gallery.person_ids])
    dist = code_distances(codes, codes)
    upper = np.triu(np.ones_like(dist, dtype=bool), k=1)
    same = person_ids[:, None] == person_ids[None, :]
    threshold = float(np.quantile(dist[upper & ~same], 0.01))
    metrics.update(threshold_fmr1=threshold, tpr_at_fmr1=float((dist[upper & same] <= threshold).mean()))
    return metrics


def finished_inv_ids(ctx: StageContext) -> dict[str, dict]:
    """Mode -> saved result (weights, validation metrics, steps, mode) of every Inv-Id that has finished."""
    return {mode: ctx.load(f"inv_id_{mode}") | {"mode": mode} for mode in ctx.preset.inv_id_modes
            if ctx.finished(f"inv_id_{mode}")}


def best_inv_id(ctx: StageContext) -> dict:
    """The finished Inv-Id with the best validation mAP (settings are picked on validation, never on test)."""
    finished = finished_inv_ids(ctx)
    if not finished:
        raise FileNotFoundError("no Inv-Id has finished; run the inv_id stage first")
    return max(finished.values(), key=lambda saved: saved["validation"]["mAP"])
