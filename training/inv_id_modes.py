"""The ways to train Inv-Id, one registry entry each: what its batches hold and what its real crops are pulled
towards. A new mode is one more entry of `INV_ID_MODES`; the stage (stages/inv_id.py) reads only these fields.

- 'paper' regresses the generating code (MSE) of generated images only, as the paper does.
- 'hybrid' fills `real_fraction` of each batch with augmented real training crops whose target is their identity's
  learned code, plus a softmax over distances to all learned codes, to close the gap between generated and real
  crops that the paper names as a weakness.
- 'discriminative' is the ablation without any generator: the hybrid's real crops only, a learned (cosine or
  linear) classifier instead of the generator's code table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InvIdMode:
    """One Inv-Id mode: which images its batches hold and which identity head its real crops train against."""

    name: str
    generated_samples: bool  # batches hold generated samples, each regressing onto the code that generated it
    real_crops: bool  # `real_fraction` of each batch is augmented real crops, trained against the identity head
    # The head over training identities: the generator's learned code table (real crops also regress onto their
    # identity's code), or else a new learned classifier (`Preset.classifier`).
    code_table: bool

    @property
    def uses_generator(self) -> bool:
        """Whether the mode needs the generator's stages (its code table or its generated samples)."""
        return self.generated_samples or self.code_table


INV_ID_MODES: dict[str, InvIdMode] = {mode.name: mode for mode in (
    InvIdMode("hybrid", generated_samples=True, real_crops=True, code_table=True),
    InvIdMode("paper", generated_samples=True, real_crops=False, code_table=True),
    InvIdMode("discriminative", generated_samples=False, real_crops=True, code_table=False),
)}


def inv_id_mode(name: str) -> InvIdMode:
    """The registered mode called `name`; a ValueError naming the choices for any other."""
    try:
        return INV_ID_MODES[name]
    except KeyError:
        raise ValueError(f"unknown Inv-Id mode {name!r}; choose one of {tuple(INV_ID_MODES)}") from None


def uses_generator(name: str) -> bool:
    """Whether the mode called `name` needs the generator's stages: the pipeline skips them for a run without one."""
    return inv_id_mode(name).uses_generator
