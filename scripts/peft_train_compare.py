#!/usr/bin/env python3
"""Model-level training throughput: `adapters` (examples/bench_train) against PyTorch + PEFT on the
same machine, side by side.

Both sides train the same random-init Llama-family model (the shape comes from `bench_train
--print-config`, so there is one definition of each preset) with the same method, rank, alpha
(2r), targets, batch, sequence length, dtype and optimizer: forward, cross entropy over every
position, backward, global-norm clipping at 1.0, AdamW (lr 1e-4). PEFT's side is
`transformers.LlamaForCausalLM(config)` (its default attention, sdpa) wrapped by `get_peft_model`
with `LoraConfig(r, lora_alpha, target_modules, lora_dropout=0, use_dora=...)`.

Every measurement runs in its own process, so each has its own peak RSS (from `wait4`), and the
rounds interleave: for each round, for each case, ours then PEFT's (then the order flips next
round), so both see the same machine conditions. A figure is the median over rounds of each
process's median step time; the ratios are medians of per-round ratios.

With `--quant nf4` (QLoRA / QDoRA) ours runs `bench_train --quant nf4` and PEFT's side loads the
same-shaped random base (saved once by this process) with bitsandbytes' 4-bit NF4 and double
quantization (`BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=<dtype>)`), as PEFT users load it; no
gradient checkpointing on either side.

Usage:
  cargo build --release --example bench_train
  python3 scripts/peft_train_compare.py --preset smollm-135m --rounds 2 --steps 4 [--json out.json]
  python3 scripts/peft_train_compare.py --preset default --batch 32 --seq 24
  python3 scripts/peft_train_compare.py --worker --config-json '{...}' --method dora ...   (one PEFT run)

Needs torch, transformers and peft (not needed by the Rust build or CI).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def rss_bytes():
    """This process's resident set now (Linux VmRSS), or None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worker(a):
    import torch
    import torch.nn.functional as F
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if a.threads:
        torch.set_num_threads(a.threads)
    dt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    dev = torch.device(a.device)
    start_rss = rss_bytes()
    cfg = json.loads(a.config_json)
    cfg["use_cache"] = False
    torch.manual_seed(a.seed)
    if a.quant:
        # QLoRA: the base saved by the parent, loaded 4-bit by bitsandbytes (NF4, double
        # quantization, compute in the run's dtype), as PEFT users load it.
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dt)
        model = LlamaForCausalLM.from_pretrained(a.quant_base, quantization_config=q,
                                                 device_map=a.device, dtype=dt)
    else:
        model = LlamaForCausalLM(LlamaConfig(**cfg)).to(device=dev, dtype=dt)
    pcfg = LoraConfig(
        r=a.rank,
        lora_alpha=a.alpha if a.alpha else 2 * a.rank,
        target_modules=a.targets.split(","),
        lora_dropout=0.0,
        bias="none",
        use_dora=a.method == "dora",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, pcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(a.seed ^ 0x5EED)
    ids = torch.randint(0, cfg["vocab_size"], (a.batch, a.seq + 1), generator=g).to(dev)
    x, y = ids[:, :-1], ids[:, 1:]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, fwd, faults0, loss_v = [], [], None, None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            faults0 = minor_faults()
        t = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        sync()
        fwd.append((time.perf_counter() - t) * 1e3)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_v = loss.item()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    timed = times[a.warmup:]
    med = statistics.median(timed)
    rec = {
        "impl": "peft",
        "method": a.method,
        "rank": a.rank,
        "batch": a.batch,
        "seq": a.seq,
        "dtype": a.dtype,
        "quant": a.quant,
        "device": a.device,
        "tokens_per_step": a.batch * a.seq,
        "trainable_params": sum(p.numel() for p in params),
        "step_ms": [round(v, 3) for v in timed],
        "median_step_ms": med,
        "median_forward_ms": statistics.median(fwd[a.warmup:]),
        "tokens_per_sec": a.batch * a.seq / (med / 1e3),
        "start_rss_bytes": start_rss,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        "page_faults_per_step": (minor_faults() - faults0) / a.steps,
        "threads": torch.get_num_threads(),
        "final_loss": loss_v,
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
    }
    print("RESULT " + json.dumps(rec), flush=True)
    return 0


def measure(cmd):
    """Runs `cmd` in a child; returns (stdout, peak RSS bytes of that child)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Read the pipes ourselves and reap with wait4 for this child's own rusage.
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
    return out, ru.ru_maxrss * 1024


def ours(a, method, json_path):
    cmd = [a.bin, "--method", method, "--rank", str(a.rank), "--batch", str(a.batch),
           "--seq", str(a.seq), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--dtype", a.dtype, "--device", a.device, "--targets", a.targets, "--seed", str(a.seed),
           "--json", json_path]
    cmd += ["--config", a.config] if a.config else ["--preset", a.preset]
    if a.alpha:
        cmd += ["--alpha", str(a.alpha)]
    if a.quant:
        cmd += ["--quant", a.quant]
    _, rss = measure(cmd)
    with open(json_path) as f:
        rec = json.load(f)[0]
    rec["peak_rss_bytes_wait4"] = rss
    return rec


def peft_run(a, method, config_json):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--config-json", config_json,
           "--method", method, "--rank", str(a.rank), "--batch", str(a.batch), "--seq", str(a.seq),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--dtype", a.dtype,
           "--device", a.device, "--targets", a.targets, "--seed", str(a.seed)]
    if a.alpha:
        cmd += ["--alpha", str(a.alpha)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.quant:
        cmd += ["--quant", a.quant, "--quant-base", a.quant_base]
    out, rss = measure(cmd)
    line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
    rec = json.loads(line[len("RESULT "):])
    rec["peak_rss_bytes_wait4"] = rss
    return rec


def gib(b):
    return f"{b / 2**30:.2f} GiB" if b is not None else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config-json", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="smollm-135m")
    ap.add_argument("--config", help="an HF config.json instead of --preset")
    ap.add_argument("--method", default="dora,lora", help="dora, lora or both (comma-separated)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=None, help="default 2 × rank")
    ap.add_argument("--targets", default=TARGETS)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=78)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--bin", default="target/release/examples/bench_train")
    ap.add_argument("--json", help="write every record to this file")
    ap.add_argument("--quant", choices=["nf4"], help="QLoRA / QDoRA: ours --quant nf4, PEFT over "
                    "bitsandbytes 4-bit NF4 with double quantization")
    ap.add_argument("--quant-base", help=argparse.SUPPRESS)
    ap.add_argument("--save-base", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    if a.save_base:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(a.seed)
        LlamaForCausalLM(LlamaConfig(**json.loads(a.config_json))).save_pretrained(a.save_base)
        return 0

    cfg_cmd = [a.bin, "--print-config"] + (["--config", a.config] if a.config else ["--preset", a.preset])
    config_json = subprocess.run(cfg_cmd, check=True, capture_output=True, text=True).stdout.strip()
    methods = [m for m in a.method.split(",") if m]
    tmp = f"/tmp/bench_train_{os.getpid()}.json"
    if a.quant:
        # The random base PEFT's workers load quantized, saved once by a child process: a child
        # forked from a large parent would start its peak RSS (wait4's ru_maxrss) at the
        # parent's size.
        a.quant_base = f"/tmp/peft_qbase_{os.getpid()}"
        subprocess.run([sys.executable, os.path.abspath(__file__), "--save-base", a.quant_base,
                        "--config-json", config_json, "--seed", str(a.seed)], check=True)
    records = []
    for rnd in range(a.rounds):
        for m in methods:
            order = ["ours", "peft"] if rnd % 2 == 0 else ["peft", "ours"]
            for who in order:
                rec = ours(a, m, tmp) if who == "ours" else peft_run(a, m, config_json)
                rec["round"] = rnd
                records.append(rec)
                print(f"round {rnd} {who:5} {m}: {rec['median_step_ms']:.0f} ms/step, "
                      f"{rec['tokens_per_sec']:.0f} tokens/s, peak RSS {gib(rec['peak_rss_bytes_wait4'])}",
                      file=sys.stderr, flush=True)
    if os.path.exists(tmp):
        os.remove(tmp)
    if a.quant:
        import shutil

        shutil.rmtree(a.quant_base, ignore_errors=True)

    def pick(impl, m):
        return [r for r in records if r["impl"] == impl and r["method"] == m]

    name = a.config or a.preset
    print(f"\n{name}, {a.dtype}{', base ' + a.quant if a.quant else ''}, batch {a.batch} × {a.seq} tokens, r = {a.rank} on {a.targets}, "
          f"{a.rounds} rounds × {a.steps} timed steps (medians)\n")
    print("| method | ours tokens/s | PEFT tokens/s | ours / PEFT | ours peak RSS | PEFT peak RSS | ours estimate | estimate / RSS | estimate / (RSS − start) |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for m in methods:
        o, p = pick("adapters", m), pick("peft", m)
        ratios = [x["tokens_per_sec"] / y["tokens_per_sec"] for x, y in zip(o, p)]
        o_tps = statistics.median(r["tokens_per_sec"] for r in o)
        p_tps = statistics.median(r["tokens_per_sec"] for r in p)
        o_rss = max(r["peak_rss_bytes_wait4"] for r in o)
        p_rss = max(r["peak_rss_bytes_wait4"] for r in p)
        est = o[0]["estimate_bytes"]
        start = statistics.median(r.get("start_rss_bytes") or 0 for r in o)
        summary[m] = {"ours_tps": o_tps, "peft_tps": p_tps, "ratio": statistics.median(ratios),
                      "ours_rss": o_rss, "peft_rss": p_rss, "estimate": est, "ours_start_rss": start,
                      "ours_step_ms": statistics.median(r["median_step_ms"] for r in o),
                      "peft_step_ms": statistics.median(r["median_step_ms"] for r in p)}
        print(f"| {m} | {o_tps:.0f} | {p_tps:.0f} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}–{max(ratios):.2f}) | {gib(o_rss)} | {gib(p_rss)} | {gib(est)} | {est / o_rss:.2f} | "
              f"{est / max(o_rss - start, 1):.2f} |")
    if "dora" in summary and "lora" in summary:
        od = [x["median_step_ms"] / y["median_step_ms"] for x, y in zip(pick("adapters", "dora"), pick("adapters", "lora"))]
        pd = [x["median_step_ms"] / y["median_step_ms"] for x, y in zip(pick("peft", "dora"), pick("peft", "lora"))]
        print(f"\nDoRA step / LoRA step: ours {statistics.median(od):.2f}, PEFT {statistics.median(pd):.2f}")
    p0 = pick("peft", methods[0])[0]
    print(f"\ntorch {p0['torch']} ({p0['threads']} threads), peft {p0['peft']}, transformers {p0['transformers']}; "
          f"ours {pick('adapters', methods[0])[0]['threads']} threads")
    if a.json:
        with open(a.json + ".partial", "w") as f:
            json.dump({"records": records, "summary": summary, "args": vars(a)}, f, indent=1)
        os.replace(a.json + ".partial", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
