"""Every schema of the `sparse_lottery` op namespace, defined once, here.

Implementations register per device in `sparse_lottery._registry`; fake kernels and autograd in
`sparse_lottery.ops`. Masks are either bool tensors of the weight's shape or the packed form made
by `pack_mask` (uint8, 1 bit per weight; see `sparse_lottery._mask_format`).
"""

import torch

LIB = torch.library.Library("sparse_lottery", "DEF")

SCHEMAS = {
    "masked_linear": "(Tensor input, Tensor weight, Tensor mask, Tensor? bias=None) -> Tensor",
    "masked_linear_grad_input": "(Tensor grad_output, Tensor weight, Tensor mask) -> Tensor",
    "masked_linear_grad_weight": "(Tensor grad_output, Tensor input, Tensor mask) -> Tensor",
    # (grad_input, grad_weight, grad_bias), each None unless output_mask asks for it; weight is
    # needed for grad_input and input for grad_weight (masked_linear's autograd calls this).
    "masked_linear_backward": (
        "(Tensor grad_output, Tensor? input, Tensor? weight, Tensor mask, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)"
    ),
    "masked_conv1d": (
        "(Tensor input, Tensor weight, Tensor mask, Tensor? bias=None, SymInt[1] stride=1, "
        "SymInt[1] padding=0, SymInt[1] dilation=1, SymInt groups=1) -> Tensor"
    ),
    "masked_conv2d": (
        "(Tensor input, Tensor weight, Tensor mask, Tensor? bias=None, SymInt[2] stride=1, "
        "SymInt[2] padding=0, SymInt[2] dilation=1, SymInt groups=1) -> Tensor"
    ),
    "apply_mask": "(Tensor tensor, Tensor mask) -> Tensor",
    "apply_masks_": "(Tensor(a!)[] tensors, Tensor[] masks) -> ()",
    "pack_mask": "(Tensor mask) -> Tensor",
    "unpack_mask": "(Tensor packed, SymInt[] shape) -> Tensor",
    # Selection (semantics in csrc/selection.h): new masks, then per group (one for the global
    # scope, one per tensor for layerwise) the threshold magnitude and the count removed, as CPU
    # float64 / int64 tensors. `counts`: the amounts are exact counts, else fractions of survivors.
    "magnitude_prune": (
        "(Tensor[] weights, Tensor?[] masks, float[] amounts, bool counts, bool layerwise) "
        "-> (Tensor[], Tensor, Tensor)"
    ),
    "random_prune": (
        "(Tensor[] masks, float[] amounts, bool counts, bool layerwise, int seed) "
        "-> (Tensor[], Tensor)"
    ),
    # Masked optimisers (semantics in csrc/masked_optim.h): torch.optim.SGD / AdamW steps on the
    # entries the masks keep (None: all); pruned entries of params and states are not touched.
    # momentum_buffers: one per param, or none when momentum is 0; first_step: every buffer is
    # new (torch's buf = grad). step: the step count after this step (>= 1).
    "masked_sgd_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor?[] masks, "
        "float lr, float momentum, float dampening, float weight_decay, bool nesterov, "
        "bool maximize, bool first_step) -> ()"
    ),
    "masked_adamw_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor?[] masks, float lr, float beta1, float beta2, float eps, float weight_decay, "
        "int step, bool maximize) -> ()"
    ),
    # Sparse execution: W (N×K) as its stored `values` (CSR order) with the CSR index
    # (row_offsets int64 [N+1], col_indices int32) and a CSC index (col_offsets int64 [K+1],
    # row_indices int32, csr_positions int32: CSC entry j is values[csr_positions[j]]); built by
    # sparse_lottery.sparse.SparseLayout. The backward returns (d_input, d_values, d_bias).
    "sparse_linear": (
        "(Tensor input, Tensor values, Tensor row_offsets, Tensor col_indices, "
        "Tensor col_offsets, Tensor row_indices, Tensor csr_positions, Tensor? bias=None) "
        "-> Tensor"
    ),
    "sparse_linear_backward": (
        "(Tensor grad_output, Tensor? input, Tensor values, Tensor row_offsets, "
        "Tensor col_indices, Tensor col_offsets, Tensor row_indices, Tensor csr_positions, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
    # The convolution of input (batch, C, H, W) with W (N, C, kh, kw) in the same layout (its
    # (N, C·kh·kw) view; column c = ci·kh·kw + i·kw + j); groups = 1, zero padding. The backward
    # returns (d_input, d_values, d_bias); input is needed for its shape even without d_values.
    "sparse_conv2d": (
        "(Tensor input, Tensor values, Tensor row_offsets, Tensor col_indices, "
        "Tensor col_offsets, Tensor row_indices, Tensor csr_positions, Tensor? bias, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor"
    ),
    "sparse_conv2d_backward": (
        "(Tensor grad_output, Tensor input, Tensor values, Tensor row_offsets, "
        "Tensor col_indices, Tensor col_offsets, Tensor row_indices, Tensor csr_positions, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
}

for _name, _schema in SCHEMAS.items():
    LIB.define(_name + _schema)
