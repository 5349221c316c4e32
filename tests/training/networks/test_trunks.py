"""Inv-Id trunks by name: the registry, the omni-scale trunk's shapes and cost, and a tiny run with it that exports
to ONNX (parity with torch) and INT8 (its parity gate) and serves codes like any Inv-Id."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from genreid.service.encoders import Encoders
from genreid.training.networks.inverters import InvId
from genreid.training.networks.osnet import OmniScaleNet
from genreid.training.networks.trunks import TRUNKS, EncoderTrunk, build_trunk, register_trunk
from genreid.training.networks.unet import Encoder
from genreid.training.presets import get_preset

from ..conftest import train_member


def test_the_registry_names_its_trunks_and_refuses_unknown_ones() -> None:
    assert {"unet", "osnet"} <= set(TRUNKS)
    with pytest.raises(ValueError, match="choose one of"):
        build_trunk(replace(get_preset("tiny"), inv_id_trunk="resnet"))
    with pytest.raises(ValueError, match="registered twice"):
        register_trunk("unet")(lambda preset: None)


def test_the_unet_trunk_keeps_the_encoders_parameter_names() -> None:
    """Inv-Ids trained before the registry (their inv_id_*.pt, the shipped models' runs) load unchanged."""
    trunk = EncoderTrunk((8, 16, 32), 1, stem_stride=1, last_stride=2)
    assert set(trunk.state_dict()) == set(Encoder((8, 16, 32), 1).state_dict())
    assert trunk(torch.rand(2, 3, 64, 32)).shape == (2, 32, 64 // trunk.reduction, 32 // trunk.reduction)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("size", [(128, 64), (256, 128)])
def test_the_omni_scale_trunk_shrinks_sixteen_times_at_every_width(width: float, size: tuple[int, int]) -> None:
    trunk = OmniScaleNet(width=width).eval()
    features = trunk(torch.rand(2, 3, *size))
    assert features.shape == (2, trunk.out_channels, size[0] // 16, size[1] // 16)
    assert trunk.out_channels == round(512 * width / 4) * 4


def test_the_omni_scale_trunk_is_a_fraction_of_the_unet_trunk() -> None:
    cpu = replace(get_preset("cpu"), inv_id_resolution=(128, 64))
    unet = InvId.from_preset(cpu)
    small = InvId.from_preset(replace(cpu, inv_id_trunk="osnet", inv_id_trunk_width=0.25))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(small.trunk) * 10 < count(unet.trunk)
    assert small(torch.rand(3, 3, 128, 64)).shape == (3, cpu.code_dim)


@pytest.mark.slow
def test_a_tiny_run_on_the_omni_scale_trunk_exports_and_serves(tiny_stages, tmp_path: Path) -> None:
    from genreid.training.export import export_run

    ctx = train_member(tiny_stages, tmp_path / "run", inv_id_trunk="osnet", inv_id_trunk_width=0.25, inv_id_steps=40)
    metadata = export_run(ctx, tmp_path / "models")  # raises when ONNX Runtime and torch disagree
    assert metadata.preset["inv_id_trunk"] == "osnet" and metadata.int8_files["inv_id"]
    assert metadata.parameters["inv_id"] == sum(p.numel() for p in ctx.new_inv_id().parameters())
    report = metadata.quantization["inv_id"].validation
    assert set(report) == {"float32", "int8"}
    crops = np.random.default_rng(0).random((5, 3, *ctx.preset.inv_id_resolution), dtype=np.float32)
    floats = Encoders(tmp_path / "models", device="cpu", precision="float").identity(crops)
    int8 = Encoders(tmp_path / "models", device="cpu", precision="int8").identity(crops)
    assert floats.shape == int8.shape == (5, ctx.preset.code_dim)
    cosine = (floats * int8).sum(1) / np.linalg.norm(floats, axis=1) / np.linalg.norm(int8, axis=1)
    assert cosine.min() > 0.9, "the INT8 trunk points codes where the float one does"
