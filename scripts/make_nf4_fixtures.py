#!/usr/bin/env python3
"""Makes the bitsandbytes NF4 golden fixtures of `adapters-runtime/tests/nf4.rs`.

Not run by CI (it needs torch, bitsandbytes and safetensors). Usage, from the workspace root:

    /work/pyenv/bin/python scripts/make_nf4_fixtures.py [--out tests/fixtures/nf4]

For each case (fixed seeds) it quantizes a weight with
`bitsandbytes.functional.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type='nf4')`
on the CPU and writes `<out>/<case>.safetensors` holding:

    weight       the input [rows, cols] (f32; bf16 for the bf16 case, which bnb was given as bf16)
    codes        bnb's packed 4-bit codes, uint8 [ceil(n/2)] (even element in the high nibble)
    qabsmax      bnb's 8-bit quantized absmax (double quantization), uint8 [blocks]
    absmax2      bnb's state2.absmax, f32 [ceil(blocks/256)]
    offset       bnb's offset (mean of the absmaxes), f32 [1]
    absmax_fp32  the first-level absmax before double quantization, f32 [blocks]
    absmax       the absmax after undoing double quantization (dequantize_blockwise + offset), f32
    dequant      bnb's dequantized weight, f32 [rows, cols] (see the README on the cols80 case)
    dynamic_map  bnb's create_dynamic_map(signed=True), f32 [256]
    nf4_code     bnb's get_4bit_type('nf4'), f32 [16]

and prints bnb's own RMS round-trip error on N(0,1) weights (the figure tests/nf4.rs checks ours
against). torch runs single-threaded so that bnb's offset (a torch CPU mean) has a fixed summation
order.
"""
import argparse
import os
import sys
import warnings

import numpy as np
import torch
from safetensors.torch import save_file

warnings.filterwarnings("ignore")
import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NF4 = F.get_4bit_type("nf4", device="cpu")
BOUNDS = (NF4[:-1] + NF4[1:]) / 2  # bnb's decision thresholds (bucketize, ties go down)


def randn(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def case_normal():
    return randn((16, 128), 0)


def case_odd():
    # n = 2343: odd, and 36 full blocks + a short last block of 39.
    return randn((33, 71), 1, 0.02)


def case_outliers():
    # n = 2730 = 42 * 64 + 42.
    w = randn((21, 130), 2, 0.05).reshape(-1)
    w[64:128] = 0.0  # an all-zero full block
    w[-42:] = 0.0  # an all-zero short last block (bnb stores absmax 1e-38 there)
    w[200] = 1.0e3  # outliers
    w[900] = -6.0e4
    w[901] = 3.0e4
    w[1300:1364] = randn((64,), 3, 1e-6)  # a tiny-scale block
    w[1500:1564] = 0.25  # a constant block
    # A block whose values sit exactly on the decision thresholds (absmax 1): ties.
    b = 1600
    w[b : b + 64] = 0.0
    w[b] = 1.0
    w[b + 1 : b + 16] = BOUNDS
    w[b + 16 : b + 31] = -BOUNDS
    return w.reshape(21, 130)


def case_cols80():
    # n = 800 = 12 * 64 + 32: the short last block holds the threshold ties (the division path).
    w = randn((10, 80), 4).reshape(-1)
    t = 768
    w[t:] = 0.0
    w[t] = -1.0
    w[t + 1 : t + 16] = BOUNDS
    w[t + 16 : t + 31] = -BOUNDS / 2
    return w.reshape(10, 80)


def case_bf16():
    # 257 blocks: two second-level (256-absmax) blocks, the second holding one absmax.
    return randn((64, 257), 5, 0.05).to(torch.bfloat16)


CASES = {
    "normal_16x128": case_normal,
    "odd_33x71": case_odd,
    "outliers_21x130": case_outliers,
    "cols80_10x80": case_cols80,
    "bf16_64x257": case_bf16,
}


def quantize(w):
    packed, st = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    _, absmax_fp32 = torch.ops.bitsandbytes.quantize_4bit.default(w, 64, "nf4", torch.uint8)
    return packed, st, absmax_fp32


def reference_dequant(codes, absmax, n):
    """NF4[code] * absmax in f32, element by element (what every bnb backend computes)."""
    c = np.stack([codes >> 4, codes & 15], axis=1).reshape(-1)[:n]
    return (NF4.numpy()[c] * absmax[np.arange(n) // 64]).astype(np.float32)


def make(out):
    notes = []
    for name, fn in CASES.items():
        w = fn()
        rows, cols = w.shape
        n = rows * cols
        packed, st, absmax_fp32 = quantize(w)
        codes = packed.reshape(-1).contiguous()
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
        st32 = st
        st32.dtype = torch.float32  # dequantize to f32 (bnb returns the input dtype otherwise)
        deq_kernel = F.dequantize_4bit(packed, st32).float()
        deq_default = _dequantize_4bit_compute(codes, absmax, NF4, 64, (rows, cols), torch.float32)
        ref = reference_dequant(codes.numpy(), absmax.numpy(), n).reshape(rows, cols)
        assert np.array_equal(deq_default.numpy(), ref), name
        kernel_bad = int((deq_kernel.numpy() != ref).sum())
        assert np.array_equal(st.state2.code.numpy(), F.create_dynamic_map(signed=True).numpy())
        tensors = {
            "weight": w.contiguous(),
            "codes": codes,
            "qabsmax": st.absmax.contiguous(),
            "absmax2": st.state2.absmax.contiguous(),
            "offset": st.offset.reshape(1).float().contiguous(),
            "absmax_fp32": absmax_fp32.contiguous(),
            "absmax": absmax.float().contiguous(),
            "dequant": deq_default.contiguous(),
            "dynamic_map": F.create_dynamic_map(signed=True).contiguous(),
            "nf4_code": NF4.contiguous(),
        }
        if kernel_bad:
            tensors["dequant_cpu_kernel"] = deq_kernel.contiguous()
        meta = {
            "bitsandbytes": bitsandbytes.__version__,
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "call": "quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type='nf4')",
            "shape": f"{rows}x{cols}",
            "input_dtype": str(w.dtype),
            "dequant_cpu_kernel_mismatches": str(kernel_bad),
        }
        path = os.path.join(out, f"{name}.safetensors")
        save_file(tensors, path, metadata=meta)
        line = (
            f"{name}: n={n} blocks={absmax.numel()} scale_blocks={st.state2.absmax.numel()} "
            f"offset={st.offset.item():.9g} bnb CPU dequantize_4bit kernel mismatches={kernel_bad} "
            f"({os.path.getsize(path)} bytes)"
        )
        print(line)
        notes.append(line)
    return notes


def rms_figures():
    """bnb's RMS round-trip error on N(0,1) [256, 1024] weights, several seeds."""
    figs = []
    for seed in range(4):
        w = randn((256, 1024), 100 + seed)
        packed, st, _ = quantize(w)
        deq = F.dequantize_4bit(packed, st)
        err = (deq - w).double()
        rms = err.pow(2).mean().sqrt().item()
        rel = rms / w.double().pow(2).mean().sqrt().item()
        figs.append((seed, rms, rel))
        print(f"N(0,1) 256x1024 seed {100 + seed}: RMS error {rms:.6f} (relative {rel:.6f})")
    mean = sum(f[1] for f in figs) / len(figs)
    print(f"mean RMS error {mean:.6f}")
    return figs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "nf4"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    print(f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"python {sys.version.split()[0]}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    make(args.out)
    rms_figures()


if __name__ == "__main__":
    main()
