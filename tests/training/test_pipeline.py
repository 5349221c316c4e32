"""The tiny preset end to end on synthetic data, and what each stage must have learned."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from genreid.service.core.model_json import ModelMetadata
from genreid.service.encoders import Encoders
from genreid.training.export import parity, round_weights_to_half
from genreid.training.pipeline import stage_table
from genreid.training.runs import CONFIG_FILE, reusable_stages
from genreid.training.runtime import machine_description
from genreid.training.stages.codes import sample_codes
from genreid.training.stages.samples import generate
from genreid.training.validation import embed


def test_every_stage_finished_timed_and_placed(tiny_run):
    """Each stage records its wall time and the machine that finished it (what the card's time table shows)."""
    ctx = tiny_run.ctx
    for name, (marker, _) in stage_table(ctx).items():
        assert ctx.path(marker).exists(), name
    timings = json.loads(ctx.path("timings.json").read_text())
    assert set(timings) == set(stage_table(ctx))
    assert all(seconds > 0 for seconds in timings.values())
    assert json.loads(ctx.path("machines.json").read_text()) == dict.fromkeys(timings, machine_description())


def test_generator_loss_falls(tiny_run):
    records = [json.loads(line) for line in tiny_run.ctx.path("log.jsonl").read_text().splitlines()]
    losses = [r["noise_l1"] for r in records if r["stage"] == "generator"]
    assert len(losses) >= 3
    assert losses[-1] < 0.8 * losses[0]


def test_inv_id_recovers_codes_of_new_generated_samples(tiny_run):
    """Held-out generated images (fresh codes and noises) map back near their codes, far better than chance."""
    ctx = tiny_run.ctx
    unet, saved = ctx.generator()
    mlp, code_saved = ctx.code_sampler()
    gen = torch.Generator().manual_seed(12345)
    codes = sample_codes(mlp, code_saved, 128, ctx.diffusion, gen)
    images = generate(unet, saved, codes, torch.randn((128, 3, *ctx.preset.resolution), generator=gen), ctx)
    inv_id = ctx.new_inv_id()
    inv_id.load_state_dict(ctx.load("inv_id_paper")["model"])
    with torch.no_grad():
        predicted = inv_id.eval()(images).numpy()
    truth = codes.numpy()
    error = ((predicted - truth) ** 2).sum(1).mean()
    chance = ((truth - truth.mean(0)) ** 2).sum(1).mean()  # best constant guess
    assert error < 0.5 * chance


def test_hybrid_inv_id_ranks_held_out_identities(tiny_run):
    validation = tiny_run.ctx.load("inv_id_hybrid")["validation"]
    _, val = tiny_run.ctx.splits
    identities = len(np.unique(val.person_ids))
    assert validation["mAP"] > 2.0 / identities  # random ranking gives about 1/identities
    assert validation["threshold_fmr1"] > 0


def test_onnx_matches_torch_on_batches_of_1_and_7(tiny_run):
    ctx = tiny_run.ctx
    unet, _ = ctx.generator()
    inv_id, inv_noise = ctx.new_inv_id(), ctx.new_inv_noise()
    inv_id.load_state_dict(ctx.load(f"inv_id_{tiny_run.metadata.inv_id_mode}")["model"])
    inv_noise.load_state_dict(ctx.load("inv_noise")["model"])
    from genreid.training.export import Denoiser

    # What export ships: the trained weights rounded to float16 (stored as such), computing in float32.
    modules = {name: round_weights_to_half(module.eval()) for name, module in
               {"inv_id": inv_id, "inv_noise": inv_noise, "denoiser": Denoiser(unet)}.items()}
    sizes = ModelMetadata.load(tiny_run.models).input_sizes
    differences = parity(modules, tiny_run.models, sizes, ctx.preset.code_dim, (1, 7))
    assert set(differences) == {"inv_id", "inv_noise", "denoiser"}
    assert max(differences.values()) <= 1e-4


def test_export_serves_through_onnx_runtime(tiny_run, synthetic_root):
    encoders = Encoders(tiny_run.models, device="cpu", precision="float")  # INT8: tests/training/test_quantize.py
    assert encoders.metadata.resolution == (64, 32)
    assert encoders.metadata.match_threshold == tiny_run.metadata.match_threshold
    _, val = tiny_run.ctx.splits
    images = val.floats(slice(0, 5))
    codes = encoders.identity(images)
    assert codes.shape == (5, 32)
    with torch.no_grad():
        inv_id = tiny_run.ctx.new_inv_id()
        inv_id.load_state_dict(tiny_run.ctx.load(f"inv_id_{tiny_run.metadata.inv_id_mode}")["model"])
        reference = embed(round_weights_to_half(inv_id), val.subset(np.arange(len(val)) < 5), torch.device("cpu"))
    np.testing.assert_allclose(codes, reference, atol=1e-4)
    rendered = encoders.render(codes, encoders.noise(images))
    assert rendered.shape == images.shape and rendered.min() >= 0 and rendered.max() <= 1


def test_evaluate_command_prints_metrics(tiny_run, synthetic_root):
    result = subprocess.run(
        [sys.executable, "-m", "genreid.service.cli", "evaluate", "--data", str(synthetic_root), "--models",
         str(tiny_run.models), "--device", "cpu", "--no-rerank"],
        capture_output=True, text=True, check=True,
    )
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"mAP", "rank1", "rank5", "rank10", "mINP", "queries", "gallery"}
    assert metrics["queries"] == 6 * 3 and metrics["gallery"] == 6 * 3 * 2
    assert 0 <= metrics["mAP"] <= 1 and metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"]


def test_figures_are_written(tiny_run, tmp_path):
    from genreid.training.figures import make_figures

    written = make_figures(tiny_run.ctx, tmp_path, tiny_run.models)
    names = {path.name for path in written}
    assert names == {"generation.png", "reconstruction.png", "neighbours.png", "sweep.png", "retrieval.png"}
    from PIL import Image

    with Image.open(tmp_path / "generation.png") as image:
        # 8 noises across, 6 identities down; tiles are 64x32 crops scaled 3x with a 4-pixel gap.
        assert image.size == (8 * (32 * 3 + 4) + 4, 6 * (64 * 3 + 4) + 4)


def test_model_card_reports_both_inv_id_variants(tiny_run):
    from genreid.training.model_card import CARD_JSON, write_card

    path = write_card(tiny_run.ctx, tiny_run.models)
    card = json.loads((tiny_run.models / CARD_JSON).read_text())
    assert set(card["test"]) == {"hybrid", "paper"}
    assert card["shipped_inv_id"] == tiny_run.metadata.inv_id_mode
    # The shipped variant's test metrics come through ONNX Runtime and match `genreid evaluate`'s path.
    assert card["test"]["hybrid"]["gallery"] == 6 * 3 * 2
    assert set(card["training_wall_seconds"]) >= {"generator", "codes", "samples", "inv_noise"}
    text = path.read_text()
    assert "Inv-Id `hybrid`" in text and "Inv-Id `paper`" in text
    assert f"{card['match_threshold']:.4f}" in text
    minutes = card["training_wall_seconds"]["generator"] / 60
    assert f"| generator | {minutes:.1f} | {machine_description()} |" in text  # each stage's machine



def test_reusable_stages_stop_at_the_first_whose_inputs_change(tiny_stages):
    run, preset = tiny_stages.run_dir, tiny_stages.preset
    new_inv_id = dataclasses.replace(preset, inv_id_resolution=(128, 64), triplet_weight=3.0)
    assert reusable_stages(run, preset, new_inv_id) == ["generator", "codes", "samples", "inv_noise"]
    wider = dataclasses.replace(preset, inv_id_widths=tuple(2 * w for w in preset.inv_widths))
    assert reusable_stages(run, preset, wider) == ["generator", "codes", "samples", "inv_noise"]
    assert reusable_stages(run, preset, dataclasses.replace(preset, samples=7)) == ["generator", "codes"]
    assert reusable_stages(run, preset, dataclasses.replace(preset, inv_noise_lr=1.0)) == [
        "generator", "codes", "samples"]
    with pytest.raises(ValueError, match="seed, split_seed differ"):
        reusable_stages(run, preset, dataclasses.replace(preset, seed=9, split_seed=9))


def test_train_from_a_finished_run_links_its_generator_and_trains_only_the_inv_id(tiny_stages, tmp_path):
    """`genreid train --from`: an Inv-Id experiment on another run's generator, codes, samples and Inv-Noise."""
    source = tmp_path / "source"
    shutil.copytree(tiny_stages.run_dir, source)
    (source / CONFIG_FILE).write_text(json.dumps({"preset": tiny_stages.preset.as_dict(),
                                                  "data": str(tiny_stages.data_root)}))

    def train_from(out, *overrides):
        sets = [arg for field in ("inv_id_steps=3", 'inv_id_modes=["hybrid"]', *overrides) for arg in ("--set", field)]
        return subprocess.run([sys.executable, "-m", "genreid.training.cli", "train", "--out", str(out),
                               "--from", str(source), "--cache-dir", str(tiny_stages.cache_dir), *sets],
                              capture_output=True, text=True, timeout=600)

    new = tmp_path / "finetune"
    done = train_from(new, f"inv_id_init={source / 'inv_id_hybrid.pt'}")
    assert done.returncode == 0, done.stderr
    assert f"reusing generator, codes, samples, inv_noise of {source}" in done.stderr
    for name in ("generator.pt", "codes.pt", "samples.npz", "inv_noise.pt"):
        assert (new / name).read_bytes() == (source / name).read_bytes()
    assert torch.load(new / "inv_id_hybrid.pt", weights_only=False)["steps"] == 3
    config = json.loads((new / CONFIG_FILE).read_text())["preset"]
    assert config["inv_id_steps"] == 3 and config["generator_steps"] == tiny_stages.preset.generator_steps
    for record in ("timings.json", "machines.json"):  # the reused stages' come along
        assert set(json.loads((new / record).read_text())) == {
            "generator", "codes", "samples", "inv_noise", "inv_id_hybrid"}, record

    # The same command again resumes the run: here a finished one, so nothing is retrained.
    finished = (new / "inv_id_hybrid.pt").read_bytes()
    again = train_from(new, f"inv_id_init={source / 'inv_id_hybrid.pt'}")
    assert again.returncode == 0, again.stderr
    assert "reusing" not in again.stderr and (new / "inv_id_hybrid.pt").read_bytes() == finished
    # --from into a started run with other settings, or with a change the generator depends on, is refused and
    # writes nothing.
    changed = train_from(new)
    assert changed.returncode == 2 and "was started with other settings" in changed.stderr
    assert (new / "inv_id_hybrid.pt").read_bytes() == finished
    refused = train_from(tmp_path / "other", "code_dim=8")
    assert refused.returncode == 2 and "code_dim differ" in refused.stderr
    assert not (tmp_path / "other").exists()
