"""torch.fx front end: a small CNN and a vision-transformer block become the same IR as an ONNX file; the
interpreter's outputs equal the module's own; an untraceable call is refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from chipfuse.errors import SpecError
from chipfuse.frontends.fx_model import from_torch
from chipfuse.ir.cv import cv_costs, shapes
from chipfuse.quant.formats import get_format
from chipfuse.runtime.cv import CVProgram


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.act = nn.Hardswish()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.act(self.pw(self.dw(x)))
        return torch.softmax(self.fc(torch.flatten(self.pool(x), 1)), dim=1)


class ViTBlock(nn.Module):
    """Patches, then one pre-norm transformer block over 16 tokens of width 32 with 4 heads (batch 1)."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 8, stride=8)
        self.norm1, self.norm2 = nn.LayerNorm(32), nn.LayerNorm(32)
        self.q, self.k, self.v, self.proj = (nn.Linear(32, 32) for _ in range(4))
        self.fc1, self.fc2, self.gelu = nn.Linear(32, 64), nn.Linear(64, 32), nn.GELU()

    def heads(self, t):
        return t.reshape(1, 16, 4, 8).permute(0, 2, 1, 3)  # [1, heads, tokens, 8]

    def forward(self, x):
        t = self.patch(x).reshape(1, 32, 16).transpose(1, 2)  # [1, 16 tokens, 32]
        h = self.norm1(t)
        att = torch.softmax(torch.matmul(self.heads(self.q(h)), self.heads(self.k(h)).transpose(2, 3)) * 0.3536,
                            dim=-1)
        o = torch.matmul(att, self.heads(self.v(h))).permute(0, 2, 1, 3).reshape(1, 16, 32)
        t = t + self.proj(o)
        return t + self.fc2(self.gelu(self.fc1(self.norm2(t))))


@pytest.mark.parametrize("cls, frame", [(SmallCNN, (1, 3, 32, 48)), (ViTBlock, (1, 3, 32, 32))])
def test_a_traced_module_runs_to_its_own_outputs(cls, frame):
    torch.manual_seed(0)
    module = cls().eval()
    if hasattr(module, "bn"):
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 1.5)
    model = from_torch(module, frame)
    x = torch.randn(frame)
    got = CVProgram(model).run({model.input_name: x})[model.outputs[0]]
    with torch.no_grad():
        want = module(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    c = cv_costs(model, shapes(model), get_format("fp32"), 4.0)
    held = sum(p.numel() for n, p in module.named_parameters() if not n.startswith("bn."))  # bn folds into stem
    folded_bias = 16 if hasattr(module, "bn") else 0
    scalars = sum(1 for v in model.constants.values() if v.dtype.kind == "f" and v.ndim == 0)  # 0.3536, GELU's
    assert c.flop > 0 and c.costs.weight_bytes.sum() == 4 * (held + folded_bias + scalars)


def test_the_cnn_costs_what_its_layers_do():
    model = from_torch(SmallCNN().eval(), (1, 3, 32, 48))
    flop = dict(zip((n.name for n in model.nodes), cv_costs(model, shapes(model), get_format("fp32"), 4.0).costs.weight_flop))
    assert flop["stem"] == 2 * 16 * 16 * 24 * 3 * 9  # 16 channels of 16 x 24, each 3 x 3 x 3 MACs
    assert flop["dw"] == 2 * 16 * 16 * 24 * 9  # depthwise: one input channel each


def test_an_untraceable_or_unknown_call_is_named():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.nn.functional.celu(x)

    with pytest.raises(SpecError, match="calls chipfuse cannot cost or run: celu"):
        from_torch(Odd(), (1, 3, 8, 8))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(SpecError, match="torch.fx cannot trace it"):
        from_torch(Branchy(), (1, 3, 8, 8))
