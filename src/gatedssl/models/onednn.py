"""Keep the weight gradient of strided 1x1 convolutions with < 16 input channels off a buggy oneDNN kernel.

The bug. For a 1x1 convolution with stride > 1 and a channels_last (NHWC) input, oneDNN's
`jit_avx512_common_1x1_convolution_bwd_weights_t` ("jit_1x1:avx512_core" in ONEDNN_VERBOSE;
"jit_bf16_1x1:avx512_core_bf16" in bf16) first copies the strided input into a dense
per-thread buffer ("rtus", reduce-to-unit-stride). The buffer is booked as `is * ic` floats
per thread but addressed at `sp * ic_block` (ic_block = 16 on AVX-512), so with fewer than 16
input channels the copy writes past it, into the other threads' buffers and beyond the
scratchpad. What follows depends on what lies there: SIGSEGV inside execute_backward_weights
(gdb), "double free or corruption" (SIGABRT), or nothing visible. The AVX2 kernel
(ONEDNN_MAX_CPU_ISA=AVX2, and AVX2-only CPUs) has the same flaw for fewer than 8 input
channels (ic_block 8); with 4 channels it returned wrong weight gradients (max relative error
0.89) or hung (the overflow reaches the reducer's spin barrier), at random.

Seen on an AMD EPYC (AVX-512), 2026-11-28, with torch 2.14.1 and 2.13.0+cpu (oneDNN v3.12.0,
git 80afa71) and torch 2.9.1 (oneDNN v3.7.1); the upstream source still books and addresses
the buffer this way. Crashes need: stride > 1; 2 <= in_channels <= 15 (1 and >= 16 ran);
NHWC; f32 or bf16. Whether a given call crashes also depends on the batch, the map size, the
thread count and the heap layout: batch 20 crashed from 46x46 inputs on (23x23 outputs), batch
3 already at 16x16, batch 1 at 56x56, and importing other modules first moved the boundary.
Not affected: the forward pass, the input gradient, NCHW, stride 1. In our networks the one
such convolution is the first stride-2 shortcut of a gated ResNet-18/34 of width < 16
(`_shortcut` in resnet.py, width -> 2 * width): at width 8 it crashes at 224 px (batch 2 and
up), and at 32 px with odd batches (3, 5, 7, 127 crashed; 64 ran). Minimal repro:

    x = torch.randn(2, 8, 56, 56).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 1, 1, requires_grad=True)
    torch.nn.functional.conv2d(x, w, stride=2).sum().backward()  # SIGSEGV

The workaround. A 1x1 convolution with stride s and no padding equals a stride-1 1x1
convolution of `x[:, :, ::s, ::s]`, so its weight (and bias) gradient can be taken at stride
1, where oneDNN needs no rtus buffer (stride-1 weight gradients ran for 2-15 input channels,
up to 128 outputs and 448x448 maps). `avoid_onednn_1x1_crash(module)` switches the class of
each affected `nn.Conv2d` (decided from its shape) to `OneDNNSafeConv2d`, whose forward and
input gradient are the plain strided convolution's (same kernels, same memory formats) and
whose weight gradient comes from the stride-1 convolution of the subsampled input. It does so
only on the CPU and only when the weight needs a gradient. Parameters, `state_dict` keys,
`stride` and `isinstance(m, nn.Conv2d)` are unchanged; convolutions that are not affected
(every one at width >= 16) are not touched and cost nothing extra.

(The shorter `F.conv2d(x[:, :, ::s, ::s], w)` also avoids the kernel, but its subsampled
forward made the w8 32 px backbone pass 1-5% slower; this form measured within noise.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Input channels below one 16-float AVX-512 block (crashes seen for 2-15; 1 is included since
# the kernel's arithmetic is the same; a 1-channel tensor just reaches oneDNN in a blocked layout, not NHWC).
AFFECTED_IN_CHANNELS = range(1, 16)


def is_affected(conv: nn.Module, in_channels: int | None = None) -> bool:
    """Whether `conv` (run on `in_channels` of its inputs; default all) has the shape whose weight gradient hits the oneDNN rtus overflow."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and conv.stride != (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and (conv.in_channels if in_channels is None else in_channels) in AFFECTED_IN_CHANNELS
    )


class _UnitStrideWeightGrad(torch.autograd.Function):
    """1x1 conv, stride s: forward and input gradient as usual, weight/bias gradient at stride 1."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv2d(x, weight, bias, stride)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        sh, sw = ctx.stride
        conv_backward = torch.ops.aten.convolution_backward
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_backward(grad, x, weight, None, [sh, sw], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            bias_sizes = [weight.shape[0]] if ctx.has_bias else None
            _, grad_w, grad_b = conv_backward(
                grad,
                x[:, :, ::sh, ::sw],
                weight,
                bias_sizes,
                [1, 1],
                [0, 0],
                [1, 1],
                False,
                [0, 0],
                1,
                [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
            )
        return grad_x, grad_w, grad_b, None


def strided_1x1_weight_grad_safe(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride) -> torch.Tensor:
    """A strided 1x1 convolution whose weight gradient is taken at stride 1 (CPU, weight needing a gradient)."""
    if torch.is_autocast_enabled("cpu"):  # cast as autocast would, then run the Function without it
        dtype = torch.get_autocast_dtype("cpu")
        input, weight = input.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _UnitStrideWeightGrad.apply(input, weight, bias, stride)
    return _UnitStrideWeightGrad.apply(input, weight, bias, stride)


def needs_safe_path(input: torch.Tensor, weight: torch.Tensor) -> bool:
    return input.device.type == "cpu" and torch.is_grad_enabled() and weight.requires_grad


class OneDNNSafeConv2d(nn.Conv2d):
    """nn.Conv2d (1x1, stride > 1, no padding) whose weight gradient avoids oneDNN's strided 1x1 kernel."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not needs_safe_path(input, weight):
            return super()._conv_forward(input, weight, bias)
        return strided_1x1_weight_grad_safe(input, weight, bias, self.stride)


def sliced_conv(conv: nn.Conv2d, x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """`conv` restricted to its first `out_channels` outputs and to x's channels (its first inputs): a slimmable width.

    A slice can be narrow where the full conv is not, so the shape check is made on the slice."""
    bias = None if conv.bias is None else conv.bias[:out_channels]
    if conv.groups > 1:  # depthwise (the only grouped conv here): output channel i reads input channel i
        return F.conv2d(x, conv.weight[:out_channels], bias, conv.stride, conv.padding, groups=out_channels)
    # a slice of a channels_last weight is strided; oneDNN's fast kernels want it packed (the copy is small; measured in BENCHMARKS.md)
    weight = conv.weight[:out_channels, : x.shape[1]].contiguous(memory_format=torch.channels_last)
    if bias is None and is_affected(conv, x.shape[1]) and needs_safe_path(x, conv.weight):
        return strided_1x1_weight_grad_safe(x, weight, None, conv.stride)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding)


def avoid_onednn_1x1_crash(module: nn.Module) -> int:
    """Make each affected 1x1 convolution in `module` avoid the buggy kernel; returns how many.

    Safe to call more than once, before or after `.to(device / memory_format)`.
    """
    count = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and is_affected(m):
            m.__class__ = OneDNNSafeConv2d
            count += 1
    return count
