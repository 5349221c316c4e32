"""Torch modules rebuilt from exported ONNX files."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genreid.service.core.model_json import MODEL_FILES
from genreid.training.export import round_weights_to_half
from genreid.training.networks.unet import UNet
from genreid.training.onnx_weights import load_onnx_weights


def test_the_exported_denoiser_loads_back_as_the_weights_it_was_exported_from(tiny_run):
    ctx = tiny_run.ctx
    exported, _ = ctx.generator()
    round_weights_to_half(exported.cpu())  # what export stores
    preset = ctx.preset
    rebuilt = load_onnx_weights(UNet(preset.widths, preset.blocks, preset.code_dim, embed_dim=64),
                                tiny_run.models / MODEL_FILES["denoiser"], prefix="unet.")
    expected = exported.state_dict()
    for key, value in rebuilt.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, expected[key]), key


def test_another_networks_file_is_refused_naming_what_does_not_fit(tiny_run):
    preset = tiny_run.ctx.preset
    wider = dataclasses.replace(preset, widths=tuple(2 * w for w in preset.widths))
    denoiser = tiny_run.models / MODEL_FILES["denoiser"]
    with pytest.raises(ValueError, match="of another shape"):
        load_onnx_weights(UNet(wider.widths, wider.blocks, wider.code_dim, embed_dim=64), denoiser, prefix="unet.")
    with pytest.raises(ValueError, match="missing"):
        load_onnx_weights(UNet(preset.widths, preset.blocks, preset.code_dim, embed_dim=64),
                          tiny_run.models / MODEL_FILES["inv_noise"], prefix="unet.")
