"""magnitude_prune and random_prune as a Triton radix select (semantics: csrc/selection.h).

Keys are 31 bits (|w| as float32 bits, or a SplitMix64 hash of the position). Three histogram
launches (key bits 30..20, 19..10, 9..0) each cover every tensor of the pool; the host reads the
small per-group histograms back (one group for the global scope, one per tensor for layerwise)
and picks the bucket holding the k-th smallest surviving key, so after the third each group
knows its threshold key T and how many survivors equal to T it removes (r). A tie-count launch
(only when some group removes part of its ties) counts those ties per block; their exclusive
sum over blocks, in position order, is each block's first tie rank, and the write launch keeps
a survivor iff key > T, or key == T with tie rank >= r (in-block ranks by tl.cumsum).

One launch covers tensors of every dtype and mask form: each program reads its tensor's row of
an int64 table (kernels/_selection_plan.py) and casts the addresses to typed pointers, with
uniform runtime branches on the dtype and mask kind. Scratch is small: the table, histograms
and one count per block; the only N-sized outputs are the new masks.
"""

import torch
import triton
import triton.language as tl

from sparse_lottery._mask_format import gemm_view

from ._selection_plan import DTYPE_KIND, FIELDS, Pool, group_ks, pick, random_stream, row

assert FIELDS == 11, "the kernels index the table as table + t * 11 + field"
_PASSES = ((20, 11), (10, 10), (0, 10))  # (shift, bits) of each radix digit, high bits first


@triton.jit
def _half_key(h):
    """float16 bits (int32 in [0, 65535]) -> bits of |h| widened exactly to float32."""
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    key = ((exponent + 112) << 23) | (mantissa << 13)
    key = tl.where(exponent == 0x1F, 0x7F800000 | (mantissa << 13), key)
    # A subnormal is mantissa * 2^-24: the int -> float conversion is exact, lower its exponent.
    sub = mantissa.to(tl.float32).to(tl.int32, bitcast=True) - (24 << 23)
    return tl.where(exponent == 0, tl.where(mantissa == 0, 0, sub), key)


@triton.jit
def _mix64(z):
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _tile(table, t, unit, bit, LOAD_ALL: tl.constexpr, RANDOM: tl.constexpr):
    """Keys (int32), survivor and in-range flags and row-major indices of the weights (unit, bit)
    (broadcast index tensors) of tensor t. Weights are read for survivors only, or for every
    weight in range with LOAD_ALL (the NaN check)."""
    desc = table + t * 11
    mask_kind = tl.load(desc + 3)
    cols = tl.load(desc + 5)
    units = tl.load(desc + 8)
    mask_addr = tl.load(desc + 1)
    in_units = unit < units
    if mask_kind == 2:  # packed: unit = byte (r, b), weight (r, 8b + bit)
        row_bytes = tl.load(desc + 6)
        r = unit // row_bytes
        c = (unit - r * row_bytes) * 8 + bit
        valid = in_units & (c < cols)
        flat = r * cols + c
        byte = tl.load(mask_addr.to(tl.pointer_type(tl.uint8)) + unit, mask=in_units, other=0)
        surv = valid & (((byte.to(tl.int32) >> bit) & 1) != 0)
        r = r + tl.zeros_like(c)
    else:
        flat = unit * 8 + bit
        valid = flat < tl.load(desc + 7)
        if mask_kind == 1:
            m = tl.load(mask_addr.to(tl.pointer_type(tl.uint8)) + flat, mask=valid, other=0)
            surv = valid & (m != 0)
        else:
            surv = valid
        if RANDOM:
            r = flat // cols
            c = flat - r * cols
    if RANDOM:
        stream = tl.load(desc + 10).to(tl.uint64, bitcast=True)
        pos = r.to(tl.uint64) * 0xD1B54A32D192ED03 + c.to(tl.uint64) * 0x8CB92BA72F3D8DD7
        key = (_mix64(stream ^ pos) >> 33).to(tl.int32)
    else:
        ld = valid if LOAD_ALL else surv
        addr = tl.load(desc + 0)
        dtype = tl.load(desc + 4)
        if dtype == 0:
            key = tl.load(addr.to(tl.pointer_type(tl.int32)) + flat, mask=ld, other=0) & 0x7FFFFFFF
        else:
            h = tl.load(addr.to(tl.pointer_type(tl.int16)) + flat, mask=ld, other=0)
            h = h.to(tl.int32) & 0xFFFF
            if dtype == 1:
                key = (h & 0x7FFF) << 16
            else:
                key = _half_key(h)
    return key, surv, valid, flat


@triton.jit
def _hist_kernel(
    table, block_tensor, block_start, prefix, hist, nan_count,
    SHIFT: tl.constexpr, BITS: tl.constexpr, FIRST: tl.constexpr, RANDOM: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # hist[group, d] += survivors of this block whose key >> (SHIFT + BITS) is the group's
    # prefix (-1: group done) and whose next BITS bits are d. FIRST also counts NaNs per tensor.
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    group = tl.load(table + t * 11 + 9)
    pfx = tl.load(prefix + group)
    if pfx >= 0:
        # A flat 1-D tile (weight e of the block is bit e % 8 of unit e // 8): tl.histogram
        # takes 1-D input, and a plain blocked layout needs no reshape ahead of it.
        e = tl.arange(0, BLOCK * 8)
        unit = tl.load(block_start + pid) + e // 8
        key, surv, valid, _ = _tile(table, t, unit, e % 8, FIRST, RANDOM)
        if FIRST and not RANDOM:
            nans = tl.sum((valid & (key > 0x7F800000)).to(tl.int32), axis=0)
            tl.atomic_add(nan_count + t, nans, mask=nans > 0)
        sel = surv & ((key >> (SHIFT + BITS)) == pfx)
        counts = tl.histogram((key >> SHIFT) & ((1 << BITS) - 1), 1 << BITS, mask=sel)
        bins = group * (1 << BITS) + tl.arange(0, 1 << BITS)
        tl.atomic_add(hist + bins, counts.to(tl.int64), mask=counts > 0)


@triton.jit
def _ties_kernel(
    table, block_tensor, block_start, thresh, need_rank, block_ties,
    RANDOM: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # block_ties[block] = survivors equal to the group's threshold, for groups that need ranks.
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    group = tl.load(table + t * 11 + 9)
    if tl.load(need_rank + group) != 0:
        e = tl.arange(0, BLOCK * 8)
        unit = tl.load(block_start + pid) + e // 8
        key, surv, _, _ = _tile(table, t, unit, e % 8, False, RANDOM)
        ties = (surv & (key == tl.load(thresh + group))).to(tl.int64)
        tl.store(block_ties + pid, tl.sum(ties, axis=0))


@triton.jit
def _write_kernel(
    table, block_tensor, block_start, thresh, ties_removed, block_rank,
    RANDOM: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # New mask: survivor and (key > T or key == T with tie rank >= r), per block of units.
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    desc = table + t * 11
    group = tl.load(desc + 9)
    units = tl.load(desc + 8)
    unit1 = tl.load(block_start + pid) + tl.arange(0, BLOCK)
    unit = unit1[:, None]
    bit = tl.arange(0, 8)[None, :]
    key, surv, valid, flat = _tile(table, t, unit, bit, False, RANDOM)
    thr = tl.load(thresh + group)
    tie = (surv & (key == thr)).to(tl.int32)
    per_unit = tl.sum(tie, axis=1)
    rank = tl.load(block_rank + pid) + ((tl.cumsum(per_unit, 0) - per_unit)[:, None]
                                        + tl.cumsum(tie, 1) - tie)  # fmt: skip
    keep = surv & ((key > thr) | ((tie != 0) & (rank >= tl.load(ties_removed + group))))
    out = tl.load(desc + 2).to(tl.pointer_type(tl.uint8))
    if tl.load(desc + 3) == 2:
        byte = tl.sum(keep.to(tl.int32) << bit, axis=1)
        tl.store(out + unit1, byte.to(tl.uint8), mask=unit1 < units)
    else:
        tl.store(out + flat, keep.to(tl.uint8), mask=valid)


def _select(pool: Pool, amounts, counts: bool, layerwise: bool, random: bool):
    """Radix select, then the write pass; returns k and the threshold key T per group (T is -1
    where k is 0)."""
    dev, groups = pool.device, pool.groups
    nan_count = torch.zeros(max(pool.tensors, 1), dtype=torch.int32, device=dev)
    prefix = torch.zeros(groups, dtype=torch.int64)
    ks = need = active = None
    for p, (shift, bits) in enumerate(_PASSES):
        hist = torch.zeros(groups, 1 << bits, dtype=torch.int64, device=dev)
        pfx = prefix if p == 0 else torch.where(active, prefix, -1)
        pool.launch(_hist_kernel, pfx.to(dev), hist, nan_count,
                    SHIFT=shift, BITS=bits, FIRST=p == 0, RANDOM=random)  # fmt: skip
        hist = hist.cpu()
        if p == 0:  # every group takes part in the first pass: it counts the survivors
            ks = group_ks(hist.sum(1).tolist(), nan_count, amounts, counts, layerwise)
            need = torch.tensor(ks, dtype=torch.int64)
            active = need > 0
        digit, need = pick(hist, need)
        prefix = (prefix << bits) | digit
    ties = hist.gather(1, digit[:, None])[:, 0]  # survivors equal to T in each group
    thresh = torch.where(active, prefix, -1)
    removed_ties = torch.where(active, need, 0)
    need_rank = active & (removed_ties < ties)
    rank = torch.zeros(max(pool.blocks, 1), dtype=torch.int64, device=dev)
    if bool(need_rank.any()):  # some group removes only part of its ties: rank them
        block_ties = torch.zeros_like(rank)
        pool.launch(_ties_kernel, thresh.to(dev), need_rank.to(torch.int32).to(dev), block_ties,
                    RANDOM=random)  # fmt: skip
        before = torch.cumsum(block_ties, 0) - block_ties
        rank = before - before[pool.block_group_first]
    pool.launch(_write_kernel, thresh.to(dev), removed_ties.to(dev), rank, RANDOM=random)
    return ks, thresh


def magnitude_prune_forward(weights, masks, amounts, counts, layerwise):
    """(new masks, CPU float64 thresholds, CPU int64 removed counts); inputs already checked."""
    device = weights[0].device if weights else torch.device("cpu")
    rows, alive, outs = [], [], []
    for i, (w, m) in enumerate(zip(weights, masks)):
        w = w.detach().contiguous()  # a copy only for a strided weight
        cols = gemm_view(w.shape)[1]
        fields = dict(weight=w.data_ptr(), dtype=DTYPE_KIND[w.dtype], cols=cols, numel=w.numel(),
                      units=(w.numel() + 7) // 8, group=i if layerwise else 0)  # fmt: skip
        if m is None:
            out = torch.empty(w.shape, dtype=torch.bool, device=device)
        else:
            m = m.contiguous()
            out = torch.empty_like(m, memory_format=torch.contiguous_format)
            fields.update(mask=m.data_ptr(), mask_kind=1)
            if m.dtype == torch.uint8:  # (rows, ceil(cols / 8)), checked
                fields.update(mask_kind=2, row_bytes=m.shape[1], units=m.numel())
        rows.append(row(out=out.data_ptr(), **fields))
        alive += [w, m]
        outs.append(out)
    pool = Pool(rows, layerwise, device, alive)
    ks, thresh = _select(pool, amounts, counts, layerwise, random=False)
    bits = thresh.clamp(min=0).to(torch.int32).view(torch.float32).double()
    thresholds = torch.where(thresh >= 0, bits, 0.0)
    return outs, thresholds, torch.tensor(ks, dtype=torch.int64)


def random_prune_forward(masks, amounts, counts, layerwise, seed):
    """(new masks, CPU int64 removed counts); inputs already checked."""
    device = masks[0].device if masks else torch.device("cpu")
    rows, alive, outs = [], [], []
    for i, m in enumerate(masks):
        m = m.contiguous()
        out = torch.empty_like(m, memory_format=torch.contiguous_format)
        fields = dict(mask=m.data_ptr(), out=out.data_ptr(), mask_kind=1,
                      group=i if layerwise else 0, stream=random_stream(seed, i))  # fmt: skip
        if m.dtype == torch.uint8:  # keys of (rows, 8 * bytes), as the reference unpacks
            fields.update(mask_kind=2, cols=8 * m.shape[1], row_bytes=m.shape[1], units=m.numel())
        else:
            fields.update(cols=gemm_view(m.shape)[1], numel=m.numel(), units=(m.numel() + 7) // 8)
        rows.append(row(**fields))
        alive.append(m)
        outs.append(out)
    pool = Pool(rows, layerwise, device, alive)
    ks, _ = _select(pool, amounts, counts, layerwise, random=True)
    return outs, torch.tensor(ks, dtype=torch.int64)
