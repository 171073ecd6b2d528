#!/usr/bin/env python3
"""Proves that HuggingFace PEFT loads the adapters this crate saves, and computes what we compute.

Not run by CI (it needs torch, peft and transformers). Usage, from the workspace root:

    python3 -m venv /tmp/peftvenv && /tmp/peftvenv/bin/pip install torch peft transformers safetensors
    /tmp/peftvenv/bin/python scripts/peft_roundtrip.py [--out DIR] [--skip-cargo]

It runs `cargo test --test checkpoints export_for_python_peft` with PEFT_ROUNDTRIP_OUT=DIR, which
writes (see tests/checkpoints.rs):
  resaved/<case>/adapter     the PEFT fixture adapters, loaded and saved again by us (+ our y)
  random/{mlp,emb}/adapter   fresh random adapters with rank/alpha patterns (+ our x, y)
  llama_resaved/adapter      the tiny Llama's PEFT DoRA adapter, loaded and saved again by us
  llama_random/{adapter,merged}  a random DoRA adapter on all projections and the embedding,
                             with rank/alpha patterns, and the model we merged with it
and checks, for each adapter, that `PeftModel.from_pretrained` loads it with no missing or
unexpected keys (the PEFT state dict equals our file, key for key and value for value) and that
PEFT's outputs equal ours. Exit status 0 when every check passes.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

import torch
import torch.nn as nn
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "peft")
RESULTS = []


class Mlp(nn.Module):
    """The fixtures' y = fc2(silu(fc1(x)))."""

    def __init__(self, d_in, d_hidden, d_out, bias1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden, bias=bias1)
        self.fc2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x):
        return self.fc2(torch.nn.functional.silu(self.fc1(x)))


class EmbMlp(nn.Module):
    """The fixtures' y = fc1(emb(ids))."""

    def __init__(self, vocab, d, d_out):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc1 = nn.Linear(d, d_out, bias=False)

    def forward(self, ids):
        return self.fc1(self.emb(ids))


def small_base(case):
    meta = json.load(open(os.path.join(FIX, case, "case.json")))
    s = meta["shapes"]
    if "vocab" in s:
        m = EmbMlp(s["vocab"], s["d"], s["d_out"])
    else:
        m = Mlp(s["d_in"], s["d_hidden"], s["d_out"], meta["fc1_bias"])
    m.load_state_dict(load_file(os.path.join(FIX, case, "base.safetensors")), strict=True)
    return m.double().eval()


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def record(name, ok, detail):
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def load_peft(base, adapter_dir, name):
    """PeftModel.from_pretrained, then checks its adapter state dict equals our file exactly."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(base, adapter_dir).eval()
    bad = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    # PEFT's own verdict: load the same files as a second adapter and read its load result.
    result = pm.load_adapter(adapter_dir, adapter_name="check")
    pm.delete_adapter("check")
    ours = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    theirs = get_peft_model_state_dict(pm, save_embedding_layers=False)
    missing = sorted(set(theirs) - set(ours)) + list(result.missing_keys)
    unexpected = sorted(set(ours) - set(theirs)) + list(result.unexpected_keys)
    differ = [k for k in ours if k in theirs and not torch.equal(ours[k].to(theirs[k].dtype), theirs[k])]
    ok = not (bad or missing or unexpected or differ)
    record(f"{name}: keys", ok, f"{len(ours)} tensors; missing {missing}, unexpected {unexpected}, "
                               f"differing {differ}, key warnings {bad}")
    return pm


def check_small(out):
    torch.set_default_dtype(torch.float64)
    for case in ["lora_r4", "dora_r4", "dora_rslora_r8", "dora_embedding_r4"]:
        d = os.path.join(out, "resaved", case)
        pm = load_peft(small_base(case), os.path.join(d, "adapter"), f"resaved {case}")
        io = load_file(os.path.join(FIX, case, "io.safetensors"))
        with torch.no_grad():
            y = pm(io["x"])
        ours = load_file(os.path.join(d, "y.safetensors"))["y"]
        e1, e2 = rel(y, io["y"]), rel(y, ours)
        record(f"resaved {case}: y", e1 <= 1e-10 and e2 <= 1e-10, f"vs fixture {e1:.2e}, vs ours {e2:.2e}")
    for name, case in [("mlp", "dora_rslora_r8"), ("emb", "dora_embedding_r4")]:
        d = os.path.join(out, "random", name)
        pm = load_peft(small_base(case), os.path.join(d, "adapter"), f"random {name}")
        ranks = {n: m.r["default"] for n, m in pm.named_modules() if hasattr(m, "r") and isinstance(m.r, dict)}
        io = load_file(os.path.join(d, "io.safetensors"))
        with torch.no_grad():
            y = pm(io["x"])
        e = rel(y, io["y"])
        record(f"random {name}: y", e <= 1e-10, f"PEFT vs ours {e:.2e}; PEFT ranks {ranks}")
    torch.set_default_dtype(torch.float32)


def check_llama(out):
    from transformers import LlamaForCausalLM

    model_dir = os.path.join(FIX, "tiny_llama_dora", "model")
    io = load_file(os.path.join(FIX, "tiny_llama_dora", "io.safetensors"))
    ids = io["input_ids"]
    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pm = load_peft(base, os.path.join(out, "llama_resaved", "adapter"), "resaved tiny_llama_dora")
    with torch.no_grad():
        logits = pm(ids).logits
    e = rel(logits, io["logits_adapted"])
    record("resaved tiny_llama_dora: logits", e <= 1e-5, f"vs fixture {e:.2e}")

    d = os.path.join(out, "llama_random")
    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pm = load_peft(base, os.path.join(d, "adapter"), "random tiny_llama")
    ranks = sorted({(n.split(".")[-1], m.r["default"]) for n, m in pm.named_modules()
                    if hasattr(m, "r") and isinstance(m.r, dict)})
    with torch.no_grad():
        logits_peft = pm(ids).logits
        merged_peft = {k: v.clone() for k, v in pm.merge_and_unload().state_dict().items()}
    ours = LlamaForCausalLM.from_pretrained(os.path.join(d, "merged"), dtype=torch.float32).eval()
    with torch.no_grad():
        logits_ours = ours(ids).logits
    e = rel(logits_ours, logits_peft)
    record("random tiny_llama: logits of our merged model vs PEFT's adapter", e <= 1e-5, f"{e:.2e}; ranks {ranks}")
    ours_sd = load_file(os.path.join(d, "merged", "model.safetensors"))
    worst = max(rel(ours_sd[k], merged_peft[k]) for k in ours_sd)
    same_keys = set(ours_sd) == set(merged_peft) - {"lm_head.weight"} | ({"lm_head.weight"} & set(ours_sd))
    record("random tiny_llama: our merge vs PEFT merge_and_unload", worst <= 1e-5 and same_keys,
           f"max rel {worst:.2e} over {len(ours_sd)} tensors")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="folder for the exported files (default: a temp folder)")
    ap.add_argument("--skip-cargo", action="store_true", help="use files already exported to --out")
    args = ap.parse_args()
    out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="peft_roundtrip_"))
    if not args.skip_cargo:
        env = dict(os.environ, PEFT_ROUNDTRIP_OUT=out)
        cmd = ["cargo", "test", "--test", "checkpoints", "export_for_python_peft", "--", "--exact"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    import peft
    import transformers
    print(f"peft {peft.__version__}, torch {torch.__version__}, transformers {transformers.__version__}; files in {out}")
    check_small(out)
    check_llama(out)
    failed = [r for r in RESULTS if not r[1]]
    print(f"\n{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
