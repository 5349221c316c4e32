"""The discriminative ablation (no generator), an Inv-Id reading a higher resolution than the generator draws, and
Inv-Id's other network variants (patch input conv, last stride 1, BNNeck)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genreid.training.export import export_run
from genreid.training.inv_id_modes import INV_ID_MODES, inv_id_mode, uses_generator
from genreid.training.losses import batch_hard_triplet, inv_id_loss
from genreid.training.networks.classifiers import CodeTableHead, cosine_logits, mean_nearest_distance, new_classifier
from genreid.training.onnx_weights import onnx_weights
from genreid.training.pipeline import run_stages, stage_table
from genreid.training.presets import get_preset
from genreid.training.run_ledger import variant_name
from genreid.training.runs import link_stages, reusable_stages
from genreid.training.stages.inv_id import InvIdPlan, inv_id_plan, inv_id_setup, train_inv_id
from genreid.training.stages.inv_noise import reconstruction_error

from .conftest import make_context


def test_cosine_logits_see_direction_only():
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    codes = torch.tensor([[0.5, 0.0], [0.0, 7.0]])
    logits = cosine_logits(codes, weight, scale=16.0)
    np.testing.assert_allclose(logits.numpy(), [[16.0, 0.0, -16.0], [0.0, 16.0, 0.0]], atol=1e-5)
    assert torch.allclose(cosine_logits(10.0 * codes, 0.1 * weight, 16.0), logits)


def test_linear_classifier_counts_the_code_length_and_cosine_does_not():
    codes = torch.randn((4, 8))
    for kind, grows in (("linear", True), ("cosine", False)):
        head = new_classifier(kind, identities=5, code_dim=8, scale=16.0)
        with torch.no_grad():
            logits, longer = head(codes), head(3.0 * codes)
        assert logits.shape == (4, 5)
        assert torch.allclose(logits, longer, atol=1e-5) != grows


def test_code_table_head_puts_the_nearest_other_code_gap_logits_below():
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    assert mean_nearest_distance(table) == pytest.approx((1.0 + 1.0 + 2.0) / 3)
    head = CodeTableHead(torch.tensor([[0.0, 0.0], [0.5, 0.0]]), gap=4.0)
    logits = head(head.targets(torch.tensor([0])))
    assert (logits[0, 0] - logits[0, 1]).item() == pytest.approx(4.0)
    assert head.state_dict() == {}  # the generator's table is not the Inv-Id stage's to save


def test_modes_are_looked_up_by_name_and_say_whether_they_need_the_generator():
    assert list(INV_ID_MODES) == ["hybrid", "paper", "discriminative"]
    assert inv_id_mode("paper").generated_samples and not inv_id_mode("paper").real_crops
    assert [uses_generator(name) for name in INV_ID_MODES] == [True, True, False]
    with pytest.raises(ValueError, match=r"unknown Inv-Id mode 'generative'; choose one of \('hybrid', 'paper', "):
        inv_id_mode("generative")


def test_inv_id_plan_splits_each_mode_batch():
    preset = get_preset("cpu", triplet_margin=0.1)
    assert inv_id_plan(preset, "hybrid") == InvIdPlan(generated=24, real=72, identities=18)
    assert inv_id_plan(preset, "paper") == InvIdPlan(generated=96, real=0, identities=18)
    # The ablation sees the hybrid's real crops (18 identities x 4), without the generated quarter.
    assert inv_id_plan(preset, "discriminative") == InvIdPlan(generated=0, real=72, identities=18)
    all_real = get_preset("cpu", real_fraction=1.0, real_identities=24, triplet_margin=0.1)
    assert inv_id_plan(all_real, "discriminative") == InvIdPlan(generated=0, real=96, identities=24)


@pytest.mark.parametrize(("overrides", "mode", "message"), [
    ({}, "discriminative", "triplet_margin"),  # no code table to take the margin from
    ({"triplet_margin": 0.1, "real_identities": 0}, "hybrid", "real_identities > 0"),
    ({"triplet_margin": 0.1, "real_identities": 7}, "discriminative", "must divide"),
    ({"triplet_margin": 0.1, "real_fraction": 0.0}, "discriminative", "draws no images"),
    ({"triplet_margin": 0.1, "classifier": "arcface"}, "discriminative", "unknown classifier"),
    ({}, "generative", "unknown Inv-Id mode"),
])
def test_inv_id_plan_refuses_settings_that_conflict(overrides, mode, message):
    with pytest.raises(ValueError, match=message):
        inv_id_plan(get_preset("cpu", **overrides), mode)


def test_discriminative_run_needs_no_generator(synthetic_root, cache_dir, tmp_path):
    """The ablation alone: no generator, codes, samples or Inv-Noise stage; real crops decoded at 128x64."""
    preset = get_preset("tiny", inv_id_modes=("discriminative",), triplet_margin=0.1, inv_id_resolution=(128, 64))
    ctx = make_context(preset, synthetic_root, tmp_path / "run", cache_dir)
    assert list(stage_table(ctx)) == ["inv_id_discriminative"]
    run_stages(ctx)
    assert not ctx.path("generator.pt").exists()
    saved = ctx.load("inv_id_discriminative")
    _, val = ctx.inv_id_splits
    assert val.images.shape[1:3] == (128, 64)
    assert saved["validation"]["mAP"] > 2.0 / len(np.unique(val.person_ids))  # random ranking: about 1/identities


def _beside(tiny_stages, run_dir, preset):
    """A run of `preset` on the tiny run's finished generator, codes, samples and Inv-Noise, as `--from` starts one."""
    ctx = make_context(preset, tiny_stages.data_root, run_dir, tiny_stages.cache_dir)
    link_stages(tiny_stages.run_dir, run_dir, reusable_stages(tiny_stages.run_dir, tiny_stages.preset, preset))
    return ctx


@pytest.mark.parametrize("overrides", [{"inv_id_resolution": (128, 64)}, {"inv_id_widths": (16, 32)}],
                         ids=["128x64", "own-widths"])
def test_hybrid_inv_id_of_its_own_size_trains_beside_the_linked_generator_and_inv_noise(tiny_stages, tmp_path,
                                                                                       overrides):
    """At 128x64, generated 64x32 samples are upsampled and real crops decoded at 128x64; with its own trunk widths,
    Inv-Id is wider than the Inv-Noise it was linked with. Either way reconstructions still work."""
    preset = get_preset("tiny", inv_id_steps=8, **overrides)
    ctx = _beside(tiny_stages, tmp_path / "run", preset)
    train_inv_id(ctx, "hybrid")
    inv_id, inv_noise = ctx.new_inv_id(), ctx.new_inv_noise()
    assert inv_id.trunk.stem.out_channels == (preset.inv_id_widths or preset.inv_widths)[0]
    assert inv_noise.encoder.stem.out_channels == preset.inv_widths[0]
    inv_id.load_state_dict(ctx.load("inv_id_hybrid")["model"])
    inv_noise.load_state_dict(ctx.load("inv_noise")["model"])
    _, val = ctx.splits
    error = reconstruction_error(ctx, inv_id, inv_noise, val.images[:4])
    assert 0.0 < error["l1"] < 1.0


def test_a_128x64_inv_id_starts_from_a_finished_64x32_one(tiny_stages, tmp_path):
    """Progressive resizing: `inv_id_init` loads a finished Inv-Id of another input size (the stripes make every
    weight size-independent) before the first step; a flattened head, whose size does depend on it, is refused."""
    preset = get_preset("tiny", inv_id_resolution=(128, 64), inv_id_init=str(tiny_stages.path("inv_id_hybrid.pt")))
    saved = tiny_stages.load("inv_id_hybrid")["model"]
    started = inv_id_setup(_beside(tiny_stages, tmp_path / "run", preset), "hybrid").model.state_dict()
    assert started.keys() == saved.keys()
    assert all(torch.equal(started[key], saved[key].cpu()) for key in saved)
    fresh = inv_id_setup(_beside(tiny_stages, tmp_path / "fresh", dataclasses.replace(preset, inv_id_init="")),
                         "hybrid")
    assert not torch.equal(fresh.model.state_dict()["head.3.weight"], saved["head.3.weight"].cpu())
    flattened = _beside(tiny_stages, tmp_path / "flat", dataclasses.replace(preset, inv_id_stripes=0))
    with pytest.raises(RuntimeError, match="size mismatch"):
        inv_id_setup(flattened, "hybrid")


def test_an_inv_id_starts_from_an_exports_onnx_file_when_its_run_is_gone(tiny_run, tmp_path):
    """`inv_id_init` also takes an export's float32 inv_id.onnx: the run starts from exactly the weights served."""
    exported = tiny_run.models / "inv_id.onnx"
    preset = get_preset("tiny", inv_id_resolution=(128, 64), inv_id_init=str(exported))
    started = inv_id_setup(_beside(tiny_run.ctx, tmp_path / "run", preset), "hybrid").model.state_dict()
    weights = onnx_weights(exported)
    for key, value in started.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value.cpu(), weights[key]), key
    with pytest.raises(ValueError, match="not this network's weights"):
        inv_id_setup(_beside(tiny_run.ctx, tmp_path / "wrong", dataclasses.replace(
            preset, inv_id_init=str(tiny_run.models / "denoiser.onnx"))), "hybrid")


def test_a_patch_input_conv_starts_as_the_finished_inv_id_on_the_downsampled_crop(tiny_stages, tmp_path):
    """Started from a 64x32 Inv-Id, one reading 128x64 through a 2x2 patch input conv computes on a crop what the
    finished one computes on that crop box-downsampled to 64x32 (so fine-tuning starts where the 64x32 one ended),
    with the trunk's last map, and so its compute per level, the size it was at 64x32."""
    preset = get_preset("tiny", inv_id_resolution=(128, 64), inv_id_stem_stride=2,
                        inv_id_init=str(tiny_stages.path("inv_id_hybrid.pt")))
    started = inv_id_setup(_beside(tiny_stages, tmp_path / "run", preset), "hybrid").model.cpu().eval()
    finished = tiny_stages.new_inv_id()
    finished.load_state_dict(tiny_stages.load("inv_id_hybrid")["model"])
    crops = torch.rand((3, 3, 128, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(started(crops), finished.eval()(torch.nn.functional.avg_pool2d(crops, 2)), atol=1e-5)
        assert started.trunk(crops)[0].shape == finished.trunk(crops[..., ::2, ::2])[0].shape
    assert started.trunk.stem.weight.shape[-2:] == (2, 2)


def test_last_stride_one_keeps_the_last_map_twice_as_fine_on_the_finished_inv_ids_weights(tiny_stages, tmp_path):
    """Without the pooling before the bottleneck the trunk's last map has twice the rows and columns, every weight
    keeps its shape (so a finished Inv-Id starts it), and the code is still one per crop."""
    preset = get_preset("tiny", inv_id_last_stride=1, inv_id_init=str(tiny_stages.path("inv_id_hybrid.pt")))
    started = inv_id_setup(_beside(tiny_stages, tmp_path / "run", preset), "hybrid").model.cpu().eval()
    finished = tiny_stages.new_inv_id().cpu().eval()
    finished.load_state_dict(tiny_stages.load("inv_id_hybrid")["model"])
    crops = torch.rand((3, 3, *preset.inv_id_resolution), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fine, coarse = started.trunk(crops)[0], finished.trunk(crops)[0]
        assert fine.shape[-2:] == (2 * coarse.shape[-2], 2 * coarse.shape[-1])
        assert started(crops).shape == finished(crops).shape == (3, preset.code_dim)
    assert all(torch.equal(value, finished.state_dict()[key]) for key, value in started.state_dict().items())
    with pytest.raises(ValueError, match="inv_id_last_stride is 1"):
        inv_id_setup(_beside(tiny_stages, tmp_path / "bad", dataclasses.replace(preset, inv_id_last_stride=3)),
                     "hybrid")


def test_inv_id_seed_varies_inv_id_alone_on_one_generator(tiny_stages, tmp_path):
    """`inv_id_seed` is no generator field, so a run with another one reuses the generator, codes and samples; its
    Inv-Id starts from other weights, while leaving it unset is the run's own `seed`."""
    preset = get_preset("tiny", inv_id_steps=8)
    reused = reusable_stages(tiny_stages.run_dir, tiny_stages.preset, dataclasses.replace(preset, inv_id_seed=1))
    assert reused == reusable_stages(tiny_stages.run_dir, tiny_stages.preset, preset)
    assert reused == ["generator", "codes", "samples", "inv_noise"]
    same = inv_id_setup(_beside(tiny_stages, tmp_path / "same", dataclasses.replace(preset, inv_id_seed=preset.seed)),
                        "hybrid").model.state_dict()
    unset = inv_id_setup(_beside(tiny_stages, tmp_path / "unset", preset), "hybrid").model.state_dict()
    other = inv_id_setup(_beside(tiny_stages, tmp_path / "other", dataclasses.replace(preset, inv_id_seed=1)),
                         "hybrid").model.state_dict()
    assert all(torch.equal(same[key], unset[key]) for key in same)
    assert not torch.equal(other["trunk.stem.weight"], unset["trunk.stem.weight"])


def test_bnneck_codes_start_at_the_tables_spread_and_the_triplet_reads_the_feature_before_the_norm(tiny_stages,
                                                                                                  tmp_path):
    """With `inv_id_bnneck` the code is a BatchNorm of the last layer, started at the code table's per-dimension
    mean and spread (the scale its codes regress onto); the triplet term reads the feature before the norm, the
    code-pull the code after it. A trained one exports like any Inv-Id (export checks ONNX against torch)."""
    preset = get_preset("tiny", inv_id_bnneck=True, inv_id_steps=8)
    ctx = _beside(tiny_stages, tmp_path / "run", preset)
    run = inv_id_setup(ctx, "hybrid")
    table = run.identity.head.table.cpu()
    crops = torch.rand((16, 3, *preset.inv_id_resolution), generator=torch.Generator().manual_seed(0))
    feature, code = run.model.cpu().train()(crops, with_feature=True)
    torch.testing.assert_close(code.mean(0), table.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(code.std(0, unbiased=False), table.std(0), atol=0, rtol=0.2)  # BatchNorm's eps
    labels = torch.arange(4).repeat_interleave(4)
    terms = {"targets": None, "labels": labels, "generated": 0, "logits_fn": run.identity.head,
             "margin": run.identity.margin, "preset": preset}
    plain, _ = inv_id_loss(code, **terms)
    necked, metrics = inv_id_loss(code, **terms, feature=feature)
    assert metrics["triplet"] == pytest.approx(batch_hard_triplet(feature, labels, margin=run.identity.margin).item())
    assert not torch.isclose(plain, necked)
    train_inv_id(ctx, "hybrid")
    assert variant_name(preset, "hybrid") == "hybrid, BNNeck, 8 steps"
    export_run(ctx, tmp_path / "models")
