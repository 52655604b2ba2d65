"""torch.nn.init equivalents for Paddle parameters.

Paddle's default initialisers differ from torch's (porting.md §2.5), so models
that are trained from scratch initialise explicitly with these functions, named
after their torch counterparts so the two model files read side by side.
Fans follow the *torch* convention: Paddle stores Linear weights as [in, out],
so for 2-D parameters fan_in is ``shape[0]``.
"""
import math

import numpy as np
import paddle


def _fans(p):
    shape = list(p.shape)
    if len(shape) < 2:
        raise ValueError(f"fan in/out needs a parameter of rank >= 2, got shape {shape}")
    if len(shape) == 2:                      # paddle Linear: [in, out]
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive   # conv: [out, in/g, k...]


def _gain(nonlinearity, a=0.0):
    if nonlinearity in ("linear", "conv2d", "conv1d", "sigmoid"):
        return 1.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + a * a))
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


@paddle.no_grad()
def constant_(p, value):
    p.set_value(paddle.full(p.shape, value, dtype=p.dtype))
    return p


@paddle.no_grad()
def uniform_(p, a=0.0, b=1.0):
    p.set_value(paddle.uniform(p.shape, dtype=p.dtype, min=a, max=b))
    return p


@paddle.no_grad()
def normal_(p, mean=0.0, std=1.0):
    p.set_value(paddle.normal(mean, std, p.shape).astype(p.dtype))
    return p


@paddle.no_grad()
def trunc_normal_(p, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Normal(mean, std) truncated to [a, b] (absolute bounds, like timm/torch)."""
    v = paddle.nn.initializer.TruncatedNormal(mean=mean, std=std, a=a, b=b)
    v(p)
    return p


def kaiming_uniform_(p, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    fan_in, fan_out = _fans(p)
    fan = fan_in if mode == "fan_in" else fan_out
    bound = math.sqrt(3.0) * _gain(nonlinearity, a) / math.sqrt(fan)
    return uniform_(p, -bound, bound)


def kaiming_normal_(p, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    fan_in, fan_out = _fans(p)
    fan = fan_in if mode == "fan_in" else fan_out
    return normal_(p, 0.0, _gain(nonlinearity, a) / math.sqrt(fan))


def xavier_uniform_(p, gain=1.0):
    fan_in, fan_out = _fans(p)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(p, -bound, bound)


def torch_default_(layer):
    """What torch does in ``reset_parameters`` of Conv*/Linear: kaiming_uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in))."""
    kaiming_uniform_(layer.weight, a=math.sqrt(5))
    if getattr(layer, "bias", None) is not None:
        fan_in, _ = _fans(layer.weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        uniform_(layer.bias, -bound, bound)
    return layer
