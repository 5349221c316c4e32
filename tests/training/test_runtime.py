"""The runtime's precision choice: bf16 autocast only where the hardware makes it pay."""

import pytest
import torch

from genreid.training.runtime import Runtime, hardware


@pytest.mark.parametrize(("capability", "dtype"), [("AVX512", torch.bfloat16), ("AVX2", torch.float32),
                                                    ("DEFAULT", torch.float32)])
def test_cpu_autocast_follows_the_cpu_capability(monkeypatch: pytest.MonkeyPatch, capability: str,
                                                 dtype: torch.dtype) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    layer = torch.nn.Linear(8, 4)
    with Runtime(torch.device("cpu")).autocast():
        out = layer(torch.randn(2, 8))
    assert out.dtype == dtype
    # What the card and the run ledger say the run trained in.
    assert hardware()["precision"] == ("bf16 autocast" if dtype == torch.bfloat16 else "float32")
