"""The paper's figures as PNG files, from a finished run (torch generator) and its exported models (ONNX).

generation.png      rows: identities (learned codes), columns: shared noises
reconstruction.png  per crop: original, noise (clipped to +-2.5, rescaled), regenerated from (Inv-Id, Inv-Noise)
retrieval.png       per query: the query, then its top-5 gallery crops (green: same person, red: other)
neighbours.png      for an identity: its crop, then crops of the 5 identities nearest in code space
sweep.png           one code dimension swept from -2 to +2 standard deviations, noise fixed
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from genreid.service.core.imaging import noise_preview
from genreid.service.core.similarity import code_distances
from genreid.service.encoders import Encoders
from genreid.training.data.cache import load_split
from genreid.training.stages.context import StageContext
from genreid.training.stages.samples import generate

log = logging.getLogger(__name__)
SCALE = 3  # 64x32 crops are tiny on screen
BORDER = 2


def _tile(image_chw: np.ndarray, colour: tuple[int, int, int] | None = None) -> Image.Image:
    pixels = (np.clip(np.moveaxis(image_chw, 0, -1), 0, 1) * 255 + 0.5).astype(np.uint8)
    tile = Image.fromarray(pixels).resize((pixels.shape[1] * SCALE, pixels.shape[0] * SCALE), Image.NEAREST)
    if colour is not None:
        ImageDraw.Draw(tile).rectangle([0, 0, tile.width - 1, tile.height - 1], outline=colour, width=BORDER + 1)
    return tile


def grid(rows: list[list[Image.Image]], gap: int = 4) -> Image.Image:
    """Paste rows of equally sized tiles on a white sheet."""
    width, height = rows[0][0].size
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (columns * (width + gap) + gap, len(rows) * (height + gap) + gap), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (gap + c * (width + gap), gap + r * (height + gap)))
    return sheet


def _render(ctx: StageContext, codes: torch.Tensor, noises: torch.Tensor) -> np.ndarray:
    unet, saved = ctx.generator()
    return generate(unet, saved, codes.to(ctx.runtime.device), noises.to(ctx.runtime.device), ctx).cpu().numpy()


def generation_figure(ctx: StageContext, identities: int = 6, noises: int = 8) -> Image.Image:
    table = ctx.load("generator")["codes"]
    rng = torch.Generator().manual_seed(1)
    chosen = torch.randperm(len(table), generator=rng)[:identities]
    noise = torch.randn((noises, 3, *ctx.preset.resolution), generator=rng)
    codes = table[chosen].repeat_interleave(noises, 0)
    images = _render(ctx, codes, noise.repeat(identities, 1, 1, 1))
    return grid([[_tile(images[r * noises + c]) for c in range(noises)] for r in range(identities)])


def sweep_figure(ctx: StageContext, dimension: int = 0, steps: int = 9) -> Image.Image:
    table = ctx.load("generator")["codes"]
    rng = torch.Generator().manual_seed(2)
    base = table[torch.randint(len(table), (3,), generator=rng)]
    offsets = torch.linspace(-2, 2, steps) * table[:, dimension].std()
    codes = base.repeat_interleave(steps, 0)
    codes[:, dimension] += offsets.repeat(len(base))
    noise = torch.randn((len(base), 3, *ctx.preset.resolution), generator=rng).repeat_interleave(steps, 0)
    images = _render(ctx, codes, noise)
    return grid([[_tile(images[r * steps + c]) for c in range(steps)] for r in range(len(base))])


def neighbours_figure(ctx: StageContext, anchors: int = 4, k: int = 5) -> Image.Image:
    saved = ctx.load("generator")
    table, person_ids = saved["codes"].numpy(), saved["person_ids"]
    train, _ = ctx.splits
    first_crop = {int(pid): int(np.flatnonzero(train.person_ids == pid)[0]) for pid in person_ids}
    dist = code_distances(table, table)
    np.fill_diagonal(dist, np.inf)
    rows = []
    for anchor in np.random.default_rng(3).choice(len(table), anchors, replace=False):
        nearest = np.argsort(dist[anchor])[:k]
        crops = [train.floats(first_crop[int(person_ids[i])]) for i in (anchor, *nearest)]
        rows.append([_tile(c) for c in crops])
    return grid(rows)


def reconstruction_figure(encoders: Encoders, seen: np.ndarray, images: np.ndarray) -> Image.Image:
    """`images` at the generator's resolution, and the same crops `seen` at Inv-Id's input size."""
    noises = encoders.noise(images)
    rebuilt = encoders.render(encoders.identity(seen), noises)
    return grid([[_tile(x), _tile(noise_preview(n)), _tile(r)] for x, n, r in zip(images, noises, rebuilt,
                                                                                 strict=True)])


def retrieval_figure(encoders: Encoders, data_root: Path, ctx: StageContext, queries: int = 6,
                     k: int = 5) -> Image.Image:
    """Crops shown as Inv-Id reads them (at its input size)."""
    query = load_split(data_root, "query", encoders.identity_resolution, ctx.cache_dir)
    gallery = load_split(data_root, "gallery", encoders.identity_resolution, ctx.cache_dir)
    picked = np.random.default_rng(4).choice(len(query), queries, replace=False)
    q_codes = encoders.identity(query.floats(picked))
    g_codes = encoders.identity(gallery.floats())
    dist = code_distances(q_codes, g_codes)
    rows = []
    for row, index in enumerate(picked):
        # Standard protocol: same person seen by the same camera is not a retrieval.
        junk = (gallery.person_ids == query.person_ids[index]) & (gallery.cameras == query.cameras[index])
        order = [g for g in np.argsort(dist[row]) if not junk[g]][:k]
        tiles = [_tile(query.floats(index), (40, 40, 40))]
        for g in order:
            hit = gallery.person_ids[g] == query.person_ids[index]
            tiles.append(_tile(gallery.floats(g), (0, 170, 0) if hit else (210, 0, 0)))
        rows.append(tiles)
    return grid(rows)


def make_figures(ctx: StageContext, out_dir: Path, models_dir: Path) -> list[Path]:
    """Write every figure to `out_dir`; retrieval and reconstruction use the exported models in `models_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    encoders = Encoders(models_dir, device="cpu")
    (_, val), (_, seen) = ctx.splits, ctx.inv_id_splits  # the same crops at the generator's and Inv-Id's sizes
    sample = np.random.default_rng(5).choice(len(val), 8, replace=False)
    figures = {
        "generation.png": lambda: generation_figure(ctx),
        "reconstruction.png": lambda: reconstruction_figure(encoders, seen.floats(sample), val.floats(sample)),
        "neighbours.png": lambda: neighbours_figure(ctx),
        "sweep.png": lambda: sweep_figure(ctx),
    }
    data_ok = (ctx.data_root / "query").is_dir() and (ctx.data_root / "bounding_box_test").is_dir()
    if data_ok:
        figures["retrieval.png"] = lambda: retrieval_figure(encoders, ctx.data_root, ctx)
    written = []
    for name, make in figures.items():
        path = out_dir / name
        make().save(path)
        log.info("wrote %s", path)
        written.append(path)
    return written
