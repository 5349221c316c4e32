"""`genreid join-inv-ids`: a run whose Inv-Id is the mean of member runs' Inv-Ids on one generator."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from genreid.service.encoders import open_session
from genreid.training.export import PARITY_TOLERANCE, export_run
from genreid.training.join import join_inv_ids
from genreid.training.model_card import CARD_JSON, write_card
from genreid.training.presets import get_preset
from genreid.training.run_files import MACHINES_FILE, read_stage_record
from genreid.training.run_ledger import variant_name
from genreid.training.runs import CONFIG_FILE, MEMBERS, load_run
from genreid.training.stages.inv_id import inv_id_setup

from .conftest import make_context, train_member


@pytest.fixture(scope="module")
def members(tiny_stages, tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [train_member(tiny_stages, root / f"seed{seed}", inv_id_seed=seed, inv_id_steps=steps)
            for seed, steps in ((1, 3), (2, 4))]


def test_the_joined_inv_id_is_the_members_mean_and_exports_as_one(members, tmp_path):
    out = tmp_path / "joined"
    result = join_inv_ids([ctx.run_dir for ctx in members], out, members[0].cache_dir)
    assert result["mode"] == "hybrid" and result["steps"] == 7
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["preset"]["inv_id_members"] == 2 and config["preset"]["inv_id_steps"] == 7
    preset, _ = load_run(out)
    assert variant_name(preset, "hybrid") == "hybrid, mean of 2 Inv-Ids, 7 steps in all"
    assert [(m["inv_id_seed"], m["inv_id_steps"]) for m in config[MEMBERS]] == [(1, 3), (2, 4)]
    member_machines = {read_stage_record(ctx.run_dir / MACHINES_FILE)["inv_id_hybrid"] for ctx in members}
    assert read_stage_record(out / MACHINES_FILE)["inv_id_hybrid"] == " + ".join(member_machines)  # one CPU here
    for name in ("generator.pt", "codes.pt", "samples.npz", "inv_noise.pt"):
        assert (out / name).read_bytes() == (members[0].run_dir / name).read_bytes()

    images = torch.rand(5, 3, *members[0].preset.inv_id_resolution)
    codes = []
    for ctx in members:
        model = ctx.new_inv_id().eval()
        model.load_state_dict(ctx.load("inv_id_hybrid")["model"])
        codes.append(model(images).detach())
    joined = make_context(preset, members[0].data_root, out, members[0].cache_dir)
    model = joined.new_inv_id().eval()
    model.load_state_dict(torch.load(out / "inv_id_hybrid.pt", weights_only=False)["model"])
    torch.testing.assert_close(model(images).detach(), (codes[0] + codes[1]) / 2)
    assert not torch.allclose(codes[0], codes[1])  # two different members, not one twice

    models = tmp_path / "models"
    metadata = export_run(joined, models)
    session = open_session(models / "inv_id.onnx", ["CPUExecutionProvider"])
    exported = session.run(None, {"image": images.numpy()})[0]
    np.testing.assert_allclose(exported, ((codes[0] + codes[1]) / 2).numpy(), atol=PARITY_TOLERANCE, rtol=0)
    assert metadata.match_threshold == result["validation"]["threshold_fmr1"]

    # The card reproduces the joined run as its members and the join, also when rebuilt without the run.
    join_line = "genreid join-inv-ids runs/tiny runs/tiny-inv-id-2 --out runs/tiny-joined"
    for from_run in (True, False):
        text = write_card(joined, models, from_run=from_run).read_text()
        card = json.loads((models / CARD_JSON).read_text())
        assert card["inv_id_members"] == [{"inv_id_seed": 1, "inv_id_steps": 3}, {"inv_id_seed": 2, "inv_id_steps": 4}]
        assert join_line in text and "genreid export runs/tiny-joined --to models/" in text
        assert "mean of 2 Inv-Ids, 3 + 4 steps" in text


def test_members_that_cannot_be_averaged_are_refused(members, tiny_stages, tmp_path):
    other = train_member(tiny_stages, tmp_path / "stripes", inv_id_seed=3, inv_id_stripes=2)
    with pytest.raises(ValueError, match="differs .* in inv_id_stripes"):
        join_inv_ids([members[0].run_dir, other.run_dir], tmp_path / "joined")
    with pytest.raises(ValueError, match="two or more"):
        join_inv_ids([members[0].run_dir], tmp_path / "joined")
    moved = tmp_path / "table"
    shutil.copytree(members[1].run_dir, moved)
    generator = torch.load(moved / "generator.pt", weights_only=False)
    torch.save(generator | {"codes": generator["codes"] + 1}, moved / "generator.pt")
    with pytest.raises(ValueError, match="different code tables"):
        join_inv_ids([members[0].run_dir, moved], tmp_path / "joined")
    assert not (tmp_path / "joined").exists()


def test_a_run_trains_one_inv_id(tiny_stages, tmp_path):
    ctx = make_context(get_preset("tiny", inv_id_members=2), tiny_stages.data_root, tmp_path, tiny_stages.cache_dir)
    with pytest.raises(ValueError, match="join-inv-ids"):
        inv_id_setup(ctx, "hybrid")
