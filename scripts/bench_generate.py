#!/usr/bin/env python3
"""Decoding speed with transformers + PEFT: PyTorch's side of `examples/bench_generate.rs`.

The same random-init Llama shape (`LlamaForCausalLM(LlamaConfig(...))`, HF's initialisation, no
download), the same prompt length (random ids) and number of new tokens, greedy
`model.generate(do_sample=False, min_new_tokens=max_new_tokens)` with `use_cache=True` and
`use_cache=False`, for the base, with a PEFT DoRA adapter (`LoraConfig(r, 2r, "all-linear",
use_dora=True)`, its B matrices filled with uniform ±0.03 so it changes the model) unmerged,
unmerged under `peft.helpers.DoraCaching` (PEFT's opt-in cache of `B·A` and the weight norm in
eval mode), and merged (`merge_and_unload`). Prefill is the time from calling `generate` to the
first new token (a streamer timestamps every token); decode tokens/s is the tokens after the first
over the time after it. Every variant is timed once per round, the order rotating each round;
figures are medians over rounds, the cached / uncached speed-up the median of per-round ratios.

Usage:
  python scripts/bench_generate.py [--hidden 512 --layers 8 --heads 8 --kv-heads 4
      --intermediate 1536 --vocab 32000] [--prompt 128 --new 64] [--rounds 5 --warmup 1]
      [--threads 2] [--attn sdpa|eager] [--adapter-rank 16]
      [--uncached base,dora,dora_cached,dora_merged|none] [--json FILE]

Needs torch, transformers and peft (not needed by the Rust build or CI).
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

VARIANTS = ["base", "dora", "dora_cached", "dora_merged"]


class TimingStreamer:
    """Records when `generate` hands over each new token (the first `put` is the prompt)."""

    def __init__(self):
        self.times = []
        self.seen_prompt = False

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def machine(torch, transformers, peft):
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"machine: {cpu}, {os.cpu_count()} logical CPUs; torch {torch.__version__} "
            f"{torch.get_num_threads()} threads; transformers {transformers.__version__}, "
            f"peft {peft.__version__}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check runs it on cuda)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--adapter-rank", type=int, default=16)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--uncached", default=",".join(VARIANTS),
                   help="variants whose uncached decoding is timed, or `none`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()
    if a.prompt < 1 or a.new < 2 or a.rounds < 1:
        sys.exit("--prompt >= 1, --new >= 2 and --rounds >= 1 are needed")

    import torch
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from peft.helpers import DoraCaching
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    dt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    variants = [v for v in a.variants.split(",") if v]
    uncached_on = [v for v in a.uncached.split(",") if v and v != "none"]
    for v in variants + uncached_on:
        if v not in VARIANTS:
            sys.exit(f"unknown variant `{v}` (expected {', '.join(VARIANTS)})")

    cfg = LlamaConfig(
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        vocab_size=a.vocab,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        max_position_embeddings=max(2048, a.prompt + a.new),
        attn_implementation=a.attn,
    )
    torch.manual_seed(a.seed)
    base = LlamaForCausalLM(cfg).to(device=a.device, dtype=dt).eval()
    attn = base.config._attn_implementation

    def with_dora():
        m = get_peft_model(copy.deepcopy(base), LoraConfig(
            r=a.adapter_rank, lora_alpha=2 * a.adapter_rank, target_modules="all-linear",
            lora_dropout=0.0, bias="none", use_dora=True, task_type="CAUSAL_LM"))
        g = torch.Generator().manual_seed(a.seed ^ 0xB0B)
        with torch.no_grad():
            for name, prm in m.named_parameters():
                if "lora_B" in name:
                    prm.copy_(torch.rand(prm.shape, generator=g, dtype=torch.float32).mul(0.06).sub(0.03))
        return m.eval()

    models = {"base": base}
    if {"dora", "dora_cached"} & set(variants):
        models["dora"] = with_dora()
        models["dora_cached"] = models["dora"]
    if "dora_merged" in variants:
        models["dora_merged"] = with_dora().merge_and_unload().eval()

    g = torch.Generator().manual_seed(a.seed ^ 0x9E37)
    prompt = torch.randint(0, a.vocab, (1, a.prompt), generator=g).to(a.device)
    attention_mask = torch.ones_like(prompt)

    def run(m, use_cache, dora_cache):
        st = TimingStreamer()
        with DoraCaching(enabled=dora_cache):
            t0 = time.perf_counter()
            out = m.generate(input_ids=prompt, attention_mask=attention_mask, do_sample=False,
                             max_new_tokens=a.new, min_new_tokens=a.new, use_cache=use_cache,
                             pad_token_id=0, streamer=st)
        ts = st.times
        if len(ts) != a.new:
            raise SystemExit(f"expected {a.new} new tokens, the streamer saw {len(ts)}")
        return (ts[0] - t0) * 1e3, (a.new - 1) / (ts[-1] - ts[0]), out[0, a.prompt:].tolist()

    print(machine(torch, transformers, peft))
    print(f"model: hidden {a.hidden}, {a.layers} layers, {a.heads}/{a.kv_heads} heads, MLP "
          f"{a.intermediate}, vocab {a.vocab}, {a.dtype}; prompt {a.prompt}, new {a.new}; DoRA "
          f"r={a.adapter_rank} α={2 * a.adapter_rank} all-linear; {a.rounds} rounds (+{a.warmup} "
          f"warm-up); attention {attn}; uncached on {','.join(uncached_on) or 'none'}")
    recs = {v: {"impl": "pytorch", "variant": v, "prompt": a.prompt, "new": a.new,
                "dtype": a.dtype, "threads": torch.get_num_threads(), "attention": attn,
                "prefill_ms": [], "cached_tok_s": [], "uncached_tok_s": [], "speedup": [],
                "tokens": None, "uncached_tokens_equal": None}
            for v in variants}
    for rnd in range(a.warmup + a.rounds):
        timed = rnd >= a.warmup
        for k in range(len(variants)):
            v = variants[(k + rnd) % len(variants)]
            m, dc = models[v], v == "dora_cached"
            prefill, tps, toks = run(m, True, dc)
            r = recs[v]
            if r["tokens"] is not None and r["tokens"] != toks:
                print(f"warning: {v}: greedy tokens changed between rounds", file=sys.stderr)
            r["tokens"] = toks
            unc = None
            if v in uncached_on:
                _, unc, utoks = run(m, False, dc)
                eq = utoks == toks
                if not eq:
                    first = next(i for i, (x, y) in enumerate(zip(toks, utoks)) if x != y)
                    print(f"warning: {v}: cached and uncached greedy tokens differ from "
                          f"position {first}", file=sys.stderr)
                r["uncached_tokens_equal"] = eq if r["uncached_tokens_equal"] is None else (
                    r["uncached_tokens_equal"] and eq)
            if timed:
                r["prefill_ms"].append(prefill)
                r["cached_tok_s"].append(tps)
                if unc is not None:
                    r["uncached_tok_s"].append(unc)
                    r["speedup"].append(tps / unc)
        print(f"round {rnd + 1}/{a.warmup + a.rounds} done", file=sys.stderr, flush=True)

    def med(v):
        return statistics.median_high(v) if v else None

    print(f"{'impl':<9} {'variant':<12} {'prefill ms':>11} {'cached tok/s':>13} "
          f"{'uncached tok/s':>15} {'cached/uncached':>16}")
    for v in variants:
        r = recs[v]
        r["median_prefill_ms"] = med(r["prefill_ms"])
        r["median_cached_tok_s"] = med(r["cached_tok_s"])
        r["median_uncached_tok_s"] = med(r["uncached_tok_s"])
        r["median_speedup"] = med(r["speedup"])
        u = r["median_uncached_tok_s"]
        s = r["median_speedup"]
        print(f"{'pytorch':<9} {v:<12} {r['median_prefill_ms']:>11.1f} "
              f"{r['median_cached_tok_s']:>13.1f} {'-' if u is None else f'{u:.1f}':>15} "
              f"{'-' if s is None else f'{s:.2f}':>16}")
    eqs = {v: recs[v]["uncached_tokens_equal"] for v in variants if v in uncached_on}
    line = f"greedy tokens: cached == uncached: {eqs}"
    if "dora" in recs and "dora_merged" in recs:
        line += f"; DoRA unmerged == merged: {recs['dora']['tokens'] == recs['dora_merged']['tokens']}"
    if "dora" in recs and "base" in recs:
        line += f"; base == DoRA: {recs['base']['tokens'] == recs['dora']['tokens']}"
        print(line)
        print("cached decode time per token, DoRA unmerged / base: "
              f"{recs['base']['median_cached_tok_s'] / recs['dora']['median_cached_tok_s']:.2f}")
    else:
        print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(list(recs.values()), f, indent=1)


if __name__ == "__main__":
    main()
