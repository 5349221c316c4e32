"""`genreid train --from MODELS_DIR`: a run on an export's denoiser and its identity codes, as exported or, for an
export that lacks them, recovered by inversion."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from genreid.service.core.model_json import IdentityCodes
from genreid.training.data.synthetic import write_synthetic_market
from genreid.training.export import round_weights_to_half
from genreid.training.model_card import write_card
from genreid.training.onnx_weights import onnx_weights
from genreid.training.runs import CONFIG_FILE, GENERATOR_FROM
from genreid.training.stages.context import normalise, to_device_floats
from genreid.training.stages.from_export import CODES_FILE, inv_id_agreement
from genreid.training.stages.generator import generator_loss, noisy_batch


@pytest.fixture(scope="module")
def full_export(tiny_run, tmp_path_factory):
    """The tiny run's export with its model card (which records the preset), and without the run directory."""
    models = tmp_path_factory.mktemp("export")
    shutil.copytree(tiny_run.models, models, dirs_exist_ok=True)
    write_card(tiny_run.ctx, models)
    return models


@pytest.fixture(scope="module")
def export_dir(full_export, tmp_path_factory):
    """The same export as written before exports kept the identity-code table."""
    models = tmp_path_factory.mktemp("old-export")
    shutil.copytree(full_export, models, dirs_exist_ok=True)
    (models / CODES_FILE).unlink()
    metadata = json.loads((models / "model.json").read_text())
    del metadata["identity_codes"]
    (models / "model.json").write_text(json.dumps(metadata))
    return models


def _train_from(source, out, cache, *args):
    return subprocess.run([sys.executable, "-m", "genreid.training.cli", "train", "--from", str(source),
                           "--out", str(out), "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def recovered(tiny_run, export_dir, tmp_path_factory):
    """A run started from the export that trains up to its hybrid Inv-Id, and its process."""
    out = tmp_path_factory.mktemp("recovered") / "run"
    done = _train_from(export_dir, out, tiny_run.ctx.cache_dir, "--data", str(tiny_run.ctx.data_root),
                       "--set", 'inv_id_modes=["hybrid"]', "--set", "inv_id_steps=3", "--stage", "generator")
    assert done.returncode == 0, done.stderr
    return out


def test_the_generator_is_the_exported_denoiser(tiny_run, export_dir, recovered):
    saved = torch.load(recovered / "generator.pt", weights_only=False)
    original, _ = tiny_run.ctx.generator()
    expected = round_weights_to_half(original.cpu()).state_dict()
    for key, value in saved["unet"].items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, expected[key]), key
    assert json.loads((recovered / CONFIG_FILE).read_text())[GENERATOR_FROM] == str(export_dir.resolve())


def _objective(ctx, unet, saved, codes):
    """The generator's loss over every training crop, the same noise for any codes."""
    train, _ = ctx.splits
    labels = torch.from_numpy(np.searchsorted(saved["person_ids"], train.person_ids))
    x0 = normalise(to_device_floats(train.images, torch.device("cpu")), saved["mean"], saved["std"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = [generator_loss(unet(*batch[:2], codes[labels]), batch[2], codes[labels], ctx.preset.code_l2)[0]
                  for batch in (noisy_batch(ctx, x0, gen) for _ in range(8))]
    return float(torch.stack(losses).mean())


def test_recovered_codes_minimise_the_generators_loss_under_the_frozen_denoiser(tiny_run, recovered):
    """The recovery optimises what the generator's training did, over the codes alone: the recovered table does
    better than no identity at all (zero codes) and than its own rows given to the wrong identities."""
    from genreid.training.runs import load_run, stage_context

    preset, data = load_run(recovered)
    ctx = stage_context(preset, data, recovered, tiny_run.ctx.cache_dir, None)
    unet, saved = ctx.generator()
    assert np.array_equal(saved["person_ids"], tiny_run.ctx.load("generator")["person_ids"])
    codes = saved["codes"]
    found = _objective(ctx, unet, saved, codes)
    assert found < _objective(ctx, unet, saved, torch.zeros_like(codes))
    assert found < _objective(ctx, unet, saved, codes.roll(1, dims=0))
    # The check the stage records: how often the export's own Inv-Id puts a training crop nearest its identity's
    # recovered code (the tiny Inv-Id is too weak to say more; docs/METHOD.md has the shipped model's).
    assert saved["inv_id_agreement"] == inv_id_agreement(ctx, tiny_run.models, codes.numpy(), saved["person_ids"])


@pytest.fixture(scope="module")
def finished(tiny_run, export_dir, recovered):
    """The same run, resumed by the command that started it (without --stage), through every stage."""
    done = _train_from(export_dir, recovered, tiny_run.ctx.cache_dir, "--data", str(tiny_run.ctx.data_root),
                       "--set", 'inv_id_modes=["hybrid"]', "--set", "inv_id_steps=3")
    assert done.returncode == 0, done.stderr
    return recovered


def test_later_stages_and_the_ledger_follow(tiny_run, export_dir, finished):
    """The same command resumes the run through the identity generator, samples, the hybrid Inv-Id and Inv-Noise
    (the export's own: same denoiser, same settings), and the run exports as a servable model. Its ledger record
    names the recovered generator, so it never averages with runs of trained generators."""
    from genreid.training.export import export_run
    from genreid.training.run_ledger import record_run
    from genreid.training.runs import load_run, stage_context

    for name in ("codes.pt", "samples.npz", "inv_id_hybrid.pt"):
        assert (finished / name).is_file(), name
    inv_noise = torch.load(finished / "inv_noise.pt", weights_only=False)
    exported = onnx_weights(export_dir / "inv_noise.onnx")
    assert inv_noise["imported_from"] == str(export_dir.resolve())
    assert all(torch.equal(value, exported[key]) for key, value in inv_noise["model"].items()
               if not key.endswith("num_batches_tracked"))
    preset, data = load_run(finished)
    ctx = stage_context(preset, data, finished, tiny_run.ctx.cache_dir, None)
    [record] = record_run(ctx)
    assert record.variant == "hybrid, 3 steps, on an exported generator (codes recovered)"
    metadata = export_run(ctx, finished.parent / "models")
    assert max(metadata.onnx_parity_max_abs.values()) < 1e-4
    # Its export keeps the recovered table, and says so: the next run from it neither recovers nor forgets that.
    assert metadata.identity_codes == IdentityCodes(file=CODES_FILE, recovered=True)
    assert np.array_equal(np.load(finished.parent / "models" / CODES_FILE), ctx.load("generator")["codes"].numpy())


def test_an_export_keeps_its_code_table_and_a_run_from_it_takes_the_table_as_is(tiny_run, full_export, tmp_path):
    """No inversion when the export kept the table: the run's generator is the original one, codes and all."""
    from genreid.training.run_ledger import generator_origin, variant_name
    from genreid.training.runs import load_run

    done = _train_from(full_export, tmp_path / "run", tiny_run.ctx.cache_dir, "--data", str(tiny_run.ctx.data_root),
                       "--set", 'inv_id_modes=["hybrid"]', "--stage", "generator")
    assert done.returncode == 0, done.stderr
    saved = torch.load(tmp_path / "run" / "generator.pt", weights_only=False)
    original = tiny_run.ctx.load("generator")
    assert torch.equal(saved["codes"], original["codes"].float())
    assert np.array_equal(saved["person_ids"], original["person_ids"])
    assert not saved["codes_recovered"]
    preset, _ = load_run(tmp_path / "run")
    assert variant_name(preset, "hybrid", generator=generator_origin(saved)) == "hybrid, on an exported generator"


def test_a_code_table_that_does_not_fit_the_data_is_refused(tiny_run, full_export, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(full_export, models)
    np.save(models / CODES_FILE, np.zeros((3, tiny_run.ctx.preset.code_dim), np.float32))
    done = _train_from(models, tmp_path / "run", tiny_run.ctx.cache_dir, "--data", str(tiny_run.ctx.data_root),
                       "--set", 'inv_id_modes=["hybrid"]', "--stage", "generator")
    assert done.returncode == 2 and "the export is damaged" in done.stderr, done.stderr
    assert not (tmp_path / "run" / "generator.pt").exists()


def test_inv_noise_is_trained_when_its_settings_differ_from_the_exports(tiny_run, finished, tmp_path):
    from genreid.training.pipeline import inv_noise_stage
    from genreid.training.runs import load_run, stage_context

    preset, data = load_run(finished)
    preset = dataclasses.replace(preset, inv_noise_steps=2)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "inv_noise.pt").unlink()
    inv_noise_stage(stage_context(preset, data, run, tiny_run.ctx.cache_dir, None))()
    assert "imported_from" not in torch.load(run / "inv_noise.pt", weights_only=False)


def test_an_export_without_its_data_or_with_other_generator_settings_is_refused(tiny_run, export_dir, tmp_path):
    cache = tiny_run.ctx.cache_dir
    no_data = _train_from(export_dir, tmp_path / "a", cache)
    assert no_data.returncode == 2 and "is an export: add --data" in no_data.stderr
    wider = _train_from(export_dir, tmp_path / "b", cache, "--data", str(tiny_run.ctx.data_root),
                        "--set", "widths=[16,32]")
    assert wider.returncode == 2 and "its generator was trained with other widths" in wider.stderr
    other = write_synthetic_market(tmp_path / "other", train_identities=9, test_identities=3, seed=5)
    elsewhere = _train_from(export_dir, tmp_path / "c", cache, "--data", str(other))
    assert elsewhere.returncode == 2 and "was trained on other crops than these" in elsewhere.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not (tmp_path / "c" / "generator.pt").exists()
