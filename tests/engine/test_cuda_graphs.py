"""The CUDA-graph option of the diffusion engine: off on the CPU, outputs unchanged there.

The graph path itself (graph == eager within bf16 tolerance, padded last mini-batch) is checked
on a GPU by ``tests/test_gpu.py`` (marked ``gpu``).
"""

from __future__ import annotations

import pytest
import torch

from audiotool.engine.cuda_graphs import denoiser_for, use_cuda_graphs
from audiotool.errors import UsageError

CPU = torch.device("cpu")


def test_auto_is_off_on_the_cpu_and_on_needs_cuda() -> None:
    assert use_cuda_graphs("auto", CPU) is False
    assert use_cuda_graphs("off", CPU) is False
    with pytest.raises(UsageError, match="needs a CUDA device"):
        use_cuda_graphs("on", CPU)
    with pytest.raises(UsageError, match="must be one of"):
        use_cuda_graphs("sometimes", CPU)
    if torch.cuda.is_available():
        assert use_cuda_graphs("auto", torch.device("cuda")) is True
        assert use_cuda_graphs("off", torch.device("cuda")) is False


def test_eager_denoiser_is_the_same_function_on_the_cpu() -> None:
    net = torch.nn.Conv2d(3, 1, 1)

    def den(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return net(torch.cat([x, cond["concat"]], dim=1)) + t.view(-1, 1, 1, 1).to(x.dtype)

    x, c, t = torch.randn(2, 1, 8, 4), torch.randn(2, 2, 8, 4), torch.tensor([3.0, 5.0])
    with torch.inference_mode():
        assert torch.equal(denoiser_for(den, CPU)(x, t, {"concat": c}), den(x, t, {"concat": c}))
        bf16 = denoiser_for(den, CPU, dtype=torch.bfloat16)(x, t, {"concat": c})
    assert bf16.dtype == torch.float32  # the conv ran in bf16 (autocast), the sum in fp32
    with torch.inference_mode():
        eager = den(x, t, {"concat": c})
    assert not torch.equal(bf16, eager) and torch.allclose(bf16, eager, atol=0.05)
    with pytest.raises(UsageError):
        denoiser_for(den, CPU, cuda_graphs=True)
