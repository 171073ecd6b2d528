#!/usr/bin/env python3
"""PEFT's side of the layer benchmark: the same layers, shapes and dtypes as
`examples/bench_layers.rs`, timed the same way, for a comparison on the same GPU.

For each `--shape in,out,r,tokens`: a bias-free `nn.Linear(in, out)` in `--dtype`, bare
(`base`), with a LoRA adapter (`lora`), with a DoRA adapter (`dora`), and the DoRA adapter merged
(`dora_merged`). Adapters are PEFT's defaults for a low-precision base (`autocast_adapter_dtype`:
float32 adapter weights), alpha = 2r, no dropout, A ~ U(±1/sqrt(in)) and B ~ U(±0.01) so that
both are non-zero, as mid-training. Forward is `y = layer(x)`; forward+backward adds
`(y * g).float().sum().backward()` into the adapter parameters only (x needs no gradient). Each
figure is the median of `--runs` timed runs after `--warmup` runs, with the device synchronised
after each run.

Output: a table on stdout and, with `--json`, an array of records
`{"impl": "peft", "kind", "din", "dout", "r", "tokens", "dtype", "fwd_ms", "fwd_bwd_ms", "device",
"torch", "peft"}` (the fields of bench_layers' records plus provenance).

Usage: python3 scripts/peft_bench.py --dtype bf16 --shape 4096,4096,16,4096 --shape 4096,11008,16,4096
"""

import argparse
import json
import os
import statistics
import sys
import time


def parse_shape(s):
    try:
        v = [int(p) for p in s.split(",")]
    except ValueError:
        v = []
    if len(v) != 4 or min(v) <= 0:
        raise argparse.ArgumentTypeError(f"--shape `{s}`: expected in,out,r,tokens (positive integers)")
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=parse_shape, action="append", help="in,out,r,tokens; repeatable")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "f16"])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="write the records to this file")
    args = ap.parse_args()
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    shapes = args.shape or [[4096, 4096, 16, 4096], [4096, 11008, 16, 4096]]

    try:
        import torch
        import peft
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        print(f"peft_bench: needs torch and peft: {e}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("peft_bench: no CUDA device for torch (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    dt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"

    def median_ms(fn):
        for _ in range(args.warmup):
            fn()
            sync()
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    class Wrap(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(x)

    torch.manual_seed(0)
    records = []
    print(f"{'kind':<12} {'in':>5} {'out':>5} {'r':>3} {'tokens':>6} {'dtype':>5} {'fwd ms':>10} {'fwd+bwd ms':>12}")
    for din, dout, r, tokens in shapes:
        w = ((torch.rand(dout, din, device=dev) * 2 - 1) / din**0.5).to(dt)
        x = (torch.rand(tokens, din, device=dev) * 2 - 1).to(dt)
        g = (torch.rand(tokens, dout, device=dev) * 2 - 1).to(dt)

        def fresh(kind):
            lin = torch.nn.Linear(din, dout, bias=False, device=dev, dtype=dt)
            with torch.no_grad():
                lin.weight.copy_(w)
            lin.weight.requires_grad_(False)
            if kind == "base":
                return Wrap(lin)
            cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["lin"],
                             use_dora=kind.startswith("dora"))
            m = get_peft_model(Wrap(lin), cfg)
            layer = m.base_model.model.lin
            with torch.no_grad():
                a = layer.lora_A["default"].weight
                b = layer.lora_B["default"].weight
                a.copy_((torch.rand_like(a, dtype=torch.float32) * 2 - 1) / din**0.5)
                b.copy_((torch.rand_like(b, dtype=torch.float32) * 2 - 1) * 0.01)
            if kind == "dora_merged":
                return m.merge_and_unload()
            return m

        for kind in ["base", "lora", "dora", "dora_merged"]:
            m = fresh(kind)
            fwd = median_ms(lambda: m(x))
            fwd_bwd = None
            if kind in ("lora", "dora"):
                def step():
                    m.zero_grad(set_to_none=True)
                    y = m(x)
                    (y * g).float().sum().backward()
                fwd_bwd = median_ms(step)
            bwd = "-" if fwd_bwd is None else f"{fwd_bwd:.2f}"
            print(f"{kind:<12} {din:>5} {dout:>5} {r:>3} {tokens:>6} {args.dtype:>5} {fwd:>10.2f} {bwd:>12}")
            records.append({"impl": "peft", "kind": kind, "din": din, "dout": dout, "r": r, "tokens": tokens,
                            "dtype": args.dtype, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd, "device": dev_name,
                            "torch": torch.__version__, "peft": peft.__version__})
            del m
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        lo = next((q["fwd_bwd_ms"] for q in records[::-1] if q["kind"] == "lora"), None)
        do = next((q["fwd_bwd_ms"] for q in records[::-1] if q["kind"] == "dora"), None)
        if lo and do:
            print(f"  DoRA / LoRA fwd+bwd = {do / lo:.3f}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(records, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
