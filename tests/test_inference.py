"""optimize_for_inference: the logits of eval mode (fuse_bn + channels_last + trace and freeze)."""

import pytest
import torch

import nasnet_core as nc
from nasnet_core.interop.inference import optimize_for_inference


def _model():
    torch.manual_seed(0)
    model = nc.create_model("nasnet_a_mobile", N=1, num_conv_filters=8, aux_head=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("freeze", [True, False])
def test_optimised_logits_equal_eval_logits(freeze):
    model = _model()
    x = torch.randn(3, 3, 64, 64)
    fast = optimize_for_inference(model, x[:1], freeze=freeze)
    with torch.no_grad():
        ref = model(x)
        got = fast(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_optimised_model_rejects_another_size():
    fast = optimize_for_inference(_model(), torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"built for \(64, 64\) inputs, got \(65, 65\)"):
        fast(torch.randn(1, 3, 65, 65))
    with pytest.raises(ValueError, match="example must be an image batch"):
        optimize_for_inference(_model(), torch.randn(3, 64, 64))
