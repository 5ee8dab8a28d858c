"""Weight initialisation shared by every network of the model (DCGAN convention).

Conv, transposed-conv and linear weights ~ N(0, 0.02), their biases 0; batch-norm
weights ~ N(1, 0.02), biases 0. LSTMs keep PyTorch's default uniform init: the
reference's init rule names only conv, linear and batch-norm layers.
"""

from __future__ import annotations

from torch import nn

_AFFINE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d)


def dcgan_init_(module: nn.Module) -> nn.Module:
    """Re-initialise every conv, linear and batch-norm layer inside `module` in place."""
    for m in module.modules():
        if isinstance(m, _AFFINE):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORM):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module
