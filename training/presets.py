"""Training configurations: `tiny` (tests, seconds), `cpu` (the shipped model, about 2 hours on 2 cores),
`paper` (the paper's sizes, for GPU hosts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Preset:
    name: str
    resolution: tuple[int, int] = (64, 32)
    code_dim: int = 32
    # Generator: conditional U-Net + identity-code table.
    widths: tuple[int, ...] = (48, 96, 192, 384)
    blocks: int = 2
    generator_steps: int = 100_000
    generator_batch: int = 16
    generator_lr: float = 1e-4
    code_lr: float = 1e-4
    code_l2: float = 0.5
    ema: float = 0.999
    # A run started from an export (`genreid train --from MODELS_DIR`) recovers the code table the export lacks,
    # the denoiser frozen: Adam on the codes alone, its learning rate decaying to zero over the steps.
    code_recovery_steps: int = 600
    code_recovery_batch: int = 64
    code_recovery_lr: float = 1e-2
    # Identity generator: diffusion MLP over the learned codes.
    codes_steps: int = 20_000
    codes_batch: int = 256
    codes_hidden: int = 512
    codes_lr: float = 1e-3
    # Generated (image, code, noise) triples for the inverters, made once with the 10-step sampler.
    samples: int = 50_000
    sample_steps: int = 10
    # Inverters.
    inv_widths: tuple[int, ...] = (48, 96, 192, 384)
    inv_id_steps: int = 100_000
    inv_id_batch: int = 64
    inv_id_lr: float = 4e-5
    # Steps between validations of Inv-Id while it trains, each a line of log.jsonl (0: only once it finishes).
    inv_id_validate_every: int = 0
    # 'hybrid' and 'paper' learn from the generator; 'discriminative' (the ablation) needs no generator at all.
    inv_id_modes: tuple[str, ...] = ("hybrid", "paper")
    inv_id_resolution: tuple[int, int] = (64, 32)  # Inv-Id's input (H, W); generated samples are upsampled to it
    # Inv-Id's trunk, by name in training/networks/trunks.py: "unet" (the generator's encoder, the fields below) or
    # "osnet" (omni-scale, about a tenth of the work per crop), whose channels `inv_id_trunk_width` scales.
    inv_id_trunk: str = "unet"
    inv_id_trunk_width: float = 1.0
    inv_id_stripes: int = 0  # 0: flatten the trunk's whole feature map; n: average it into n horizontal stripes
    # Inv-Id's input conv reads s x s patches: at 2, a 128x64 crop costs about what a 64x32 one does (its trunk
    # runs at 64x32), where a 1x1 input conv runs the whole trunk at 128x64, four times the work.
    inv_id_stem_stride: int = 1
    # 1: Inv-Id's trunk does not pool before its bottleneck, so its last map has twice the rows and columns (8x4 ->
    # 16x8 at 64x32) at about 1.75 times the trunk's cost: re-ID's "last stride 1", detail without a larger input.
    inv_id_last_stride: int = 2
    # Inv-Id's trunk widths where they differ from Inv-Noise's (`inv_widths`); (): the same. Apart, a wider Inv-Id
    # trains on another run's generator, samples and Inv-Noise (`genreid train --from`) without retraining them.
    inv_id_widths: tuple[int, ...] = ()
    # BNNeck (Luo et al., "Bag of Tricks"): the code is a BatchNorm of Inv-Id's last layer; the triplet term reads the
    # feature before the norm, the code-pull, softmax and distillation the code after it.
    inv_id_bnneck: bool = False
    # A finished Inv-Id (its inv_id_<mode>.pt, of any input size) whose weights start this one: a 128x64 Inv-Id
    # fine-tuned from a 64x32 one costs a fraction of one trained from scratch (progressive resizing). "": none.
    inv_id_init: str = ""
    # How many Inv-Ids of one generator the run's Inv-Id averages: each trains as a run of its own, and `genreid
    # join-inv-ids` makes the run that holds their mean (training refuses a preset with more than one).
    inv_id_members: int = 1
    # A finished run whose best Inv-Id (a joined one too) teaches this one: each real crop's code also regresses
    # onto the teacher's code of that crop, by direction, weighted `distill_weight`. One network's serving cost for
    # what a joined Inv-Id ranks like (docs/METHOD.md). "": none.
    inv_id_teacher: str = ""
    distill_weight: float = 0.0
    # Share of each hybrid batch that is real crops targeting their learned code; the discriminative mode trains
    # on these real crops alone (real_fraction x inv_id_batch a step).
    real_fraction: float = 0.5
    # Regularisers of the hybrid Inv-Id's real crops (picked on the validation identities).
    real_identities: int = 0  # draw the real crops as this many identities x (real crops / this) each; 0: at random
    triplet_weight: float = 0.0  # batch-hard triplet loss on the real crops' codes (needs real_identities)
    # 0: the generator code table's mean nearest-neighbour distance; the discriminative mode has no table: set it.
    triplet_margin: float = 0.0
    label_smoothing: float = 0.0  # of the softmax over the learned codes
    softmax_gap: float = 4.0  # logits between one's own learned code and the mean nearest other code
    inv_id_weight_decay: float = 0.0  # decoupled (AdamW)
    # The discriminative mode's learned table, one vector per training identity: 'cosine' (logits are
    # classifier_scale x the cosine between code and vector) or 'linear' (logits are their dot product + a bias).
    classifier: str = "cosine"
    classifier_scale: float = 16.0
    inv_noise_steps: int = 50_000
    inv_noise_batch: int = 64
    inv_noise_lr: float = 1e-4
    # Identities held out of training (carved from the training split) to pick settings and calibrate.
    val_identities: int = 50
    seed: int = 0  # initial weights and batch draws
    # Inv-Id's own seed where it differs from `seed` (a generator field): seeds of Inv-Id on one generator.
    inv_id_seed: int | None = None
    # Which identities are held out, and their query/gallery choice: apart from `seed`, so runs of several seeds
    # are scored on the same validation queries.
    split_seed: int = 0
    checkpoint_seconds: float = 300.0
    log_every: int = 50  # steps per line of log.jsonl (and per images/s window)

    @property
    def inv_id_rng_seed(self) -> int:
        """The seed of Inv-Id's initial weights and batch draws."""
        return self.seed if self.inv_id_seed is None else self.inv_id_seed

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        widths=(8, 16),
        blocks=1,
        generator_steps=150,
        generator_batch=16,
        generator_lr=2e-3,
        code_lr=1e-2,
        ema=0.9,
        code_recovery_steps=40,
        code_recovery_batch=32,
        codes_steps=150,
        codes_batch=64,
        codes_hidden=64,
        samples=256,
        sample_steps=4,
        inv_widths=(8, 16),
        inv_id_steps=120,
        inv_id_batch=32,
        inv_id_lr=2e-3,
        inv_id_stripes=4,
        real_identities=4,
        triplet_weight=1.0,
        label_smoothing=0.1,
        inv_id_weight_decay=0.05,
        inv_noise_steps=60,
        inv_noise_batch=32,
        inv_noise_lr=2e-3,
        val_identities=4,
        checkpoint_seconds=0.0,
    ),
    # The shipped model: about 2 hours of this 2-core CPU in all (wall times in models/MODEL_CARD.md).
    "cpu": Preset(
        name="cpu",
        widths=(32, 64, 128, 256),
        blocks=2,
        generator_steps=5_000,
        generator_batch=32,
        generator_lr=3e-4,
        code_lr=2e-3,
        ema=0.995,
        codes_steps=8_000,
        samples=12_000,
        inv_widths=(32, 64, 128, 256),
        inv_id_steps=2_500,
        inv_id_batch=96,
        inv_id_lr=3e-4,
        inv_id_stripes=4,
        real_fraction=0.75,
        real_identities=18,
        triplet_weight=24.0,
        label_smoothing=0.1,
        inv_id_weight_decay=0.05,
        inv_noise_steps=1_500,
        inv_noise_batch=32,
        inv_noise_lr=3e-4,
    ),
    "paper": Preset(name="paper"),
}


def get_preset(name: str, **overrides) -> Preset:
    """A named preset, with fields overridden (e.g. steps for a shorter run)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
