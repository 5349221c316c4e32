"""Stage 2: the identity generator, a diffusion MLP over the learned codes (normalised per dimension),
so new plausible identities can be sampled for the inverters."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from genreid.training.batches import batch_indices
from genreid.training.diffusion import Diffusion
from genreid.training.networks.code_mlp import CodeMLP
from genreid.training.run_files import Checkpointed, save_atomic
from genreid.training.runtime import step_generator
from genreid.training.stages.context import StageContext
from genreid.training.stages.generator import code_statistics

log = logging.getLogger(__name__)


def sample_codes(mlp: CodeMLP, saved: dict, count: int, diffusion: Diffusion, generator: torch.Generator,
                 steps: int = 10) -> torch.Tensor:
    """Draw `count` new identity codes (in the code table's scale)."""
    device = saved["mean"].device

    def denoise(x: torch.Tensor, variance: torch.Tensor, _: None) -> torch.Tensor:
        # The MLP predicts x0; DDIM wants eps = (x - a x0) / s.
        x0 = mlp(x, variance)
        return (x - (1.0 - variance).sqrt() * x0) / variance.sqrt()

    noise = torch.randn((count, saved["mean"].numel()), generator=generator).to(device)
    with torch.no_grad():
        normalised = diffusion.sample(denoise, noise, None, steps)
    return normalised * saved["std"] + saved["mean"]


def train_codes(ctx: StageContext) -> None:
    torch.manual_seed(ctx.preset.seed)  # initial weights depend on the preset's seed alone
    preset, runtime = ctx.preset, ctx.runtime
    table = ctx.load("generator")["codes"].to(runtime.device)
    mean, std = table.mean(0), table.std(0)
    normalised = (table - mean) / std
    mlp = CodeMLP(preset.code_dim, preset.codes_hidden).to(runtime.device)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=preset.codes_lr)

    # The .ckpt's keys (see Checkpointed): runs resume across code versions only while they stay.
    checkpointed = Checkpointed(mlp=mlp, optimizer=optimizer)

    def step(index: int) -> dict[str, float]:
        _, gen = step_generator(preset.seed, index, runtime.rank, salt=2)
        x0 = normalised[torch.from_numpy(batch_indices(len(table), preset.codes_batch, index, preset.seed))]
        eps = torch.randn(x0.shape, generator=gen).to(runtime.device)
        noisy, variance = ctx.diffusion.add_noise(x0, eps, torch.rand(len(x0), generator=gen).to(runtime.device))
        loss = F.l1_loss(mlp(noisy, variance), x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    if not ctx.loop("codes", preset.codes_steps, preset.codes_batch, checkpointed).run(step):
        return
    mlp.eval()
    saved = {"mlp": mlp.state_dict(), "mean": mean, "std": std}
    sampled = sample_codes(mlp, saved, len(table), ctx.diffusion, torch.Generator().manual_seed(preset.seed))
    stats = {"learned": code_statistics(table.cpu().numpy()), "sampled": code_statistics(sampled.cpu().numpy())}
    log.info("identity generator done; %s", stats)
    if runtime.is_main:
        save_atomic({**saved, "stats": stats}, ctx.path("codes.pt"))
