"""Golden fixtures for greedy generation with a KV cache: transformers `generate` (greedy, float32, eager
attention, use_cache=True) on the tiny family checkpoints of tests/fixtures/families (qwen2_tied, qwen2_untied,
qwen3, mistral, gemma2, gemma3, phi3) plus a tiny Llama made here, each without and with its DoRA adapter
(PeftModel.from_pretrained, NOT merged), 2 prompts each. 24 new tokens per case, so the sequence (up to 33
positions) runs well past the sliding window 4 of mistral / gemma2 / gemma3 / phi3: a KV cache that ignores the
window (or drops the wrong entries) gives different tokens.

Written to tests/fixtures/generate/:
  llama/model/    save_pretrained output of a tiny random LlamaForCausalLM (config.json + model.safetensors)
  llama/adapter/  PEFT DoRA adapter (r=4, alpha=8, all-linear), random non-zero values, save_pretrained output
  cases.json      list of {name, model, adapter, prompt, new_tokens, min_gap, seed}; model / adapter are paths
                  relative to tests/fixtures (adapter null for the base model)
  README.md       (hand-written) what the files are and the tolerance note

Every case is checked in this script: the tokens are identical with use_cache=False and with the adapter merged
(merge_and_unload); each new token is the argmax of the raw logits of its step (no logits processor ran, eos never
stops generation). A prompt (ids uniform in 1..95, lengths 5 and 9, seed 4000 + 1000*model + 100*k + attempt) is
kept only if
  * min_gap = min over the 24 steps of (top-1 - top-2 raw logit) >= MIN_GAP (1e-3: no near-tie that float32
    rounding differences between implementations could flip),
  * the 24 new tokens hold at least 2 different ids (the gemma models like to repeat one id),
  * windowed models (mistral, gemma2, gemma3, phi3; window 4): the same weights with the window off
    (sliding_window 64) AND with a window one too wide (5) both give different tokens, so the case catches a
    KV cache that ignores the window or keeps one entry too many;
otherwise the next attempt's seed is used (the seed used is recorded).

Usage: /work/pyenv/bin/python scripts/make_generate_fixtures.py [OUT_DIR]
       (default: tests/fixtures/generate -- the committed files were made with the default)
"""
import json
import math
import os
import shutil
import sys

import torch
import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, GenerationConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_family_fixtures import perturb_adapter  # noqa: E402  (the same adapter values)

torch.set_default_dtype(torch.float32)
torch.set_num_threads(2)

NEW_TOKENS = 24
PROMPT_LENS = (5, 9)
VOCAB = 96
MIN_GAP = 1e-3
MAX_ATTEMPTS = 100
MIN_DISTINCT = 2        # at least 2 different ids among the 24 new tokens (gemma2/3 like to repeat one id)
NO_WINDOW = 64          # = max_position_embeddings: the window never bites (sequences are <= 33 long)
PAD = 0
# tiny Llama, same dims and recipe as scripts/make_family_fixtures.py
LLAMA_SEED = 2007
LLAMA_DIMS = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
R, ALPHA = 4, 8
# (name, folder relative to tests/fixtures); the folder holds model/ and adapter/
MODELS = [("qwen2_tied", "families/qwen2_tied"), ("qwen2_untied", "families/qwen2_untied"),
          ("qwen3", "families/qwen3"), ("mistral", "families/mistral"), ("gemma2", "families/gemma2"),
          ("gemma3", "families/gemma3"), ("phi3", "families/phi3"), ("llama", "generate/llama")]


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# tiny Llama (the recipe of scripts/make_family_fixtures.py: randomize / perturb_adapter)
# --------------------------------------------------------------------------------------------

def randomize(model, gen):
    """linear weights N(0, 1/in), embeddings 0.25 N(0, 1), norm weights 1 + 0.1 N(0,1)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            z = torch.randn(p.shape, generator=gen)
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * z)
            elif "embed_tokens" in n:
                p.copy_(0.25 * z)
            elif p.dim() == 2:
                p.copy_(z / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError("unexpected parameter " + n)


def make_llama(d):
    log(f"=== llama: LlamaForCausalLM -> {d}")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    gen = torch.Generator().manual_seed(LLAMA_SEED)
    torch.manual_seed(LLAMA_SEED)
    cfg = transformers.LlamaConfig(**LLAMA_DIMS, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                   rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
                                   hidden_act="silu", attention_bias=False, mlp_bias=False,
                                   bos_token_id=1, eos_token_id=2)
    base = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    randomize(base, gen)
    base.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
    os.remove(os.path.join(d, "model", "generation_config.json"))   # as in tests/fixtures/families
    pm = get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear", use_dora=True,
                                         lora_dropout=0.0))
    perturb_adapter(pm, gen)
    pm.eval()
    pm.save_pretrained(os.path.join(d, "adapter"))
    os.remove(os.path.join(d, "adapter", "README.md"))
    n_ad = sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n)
    log(f"llama: base params {sum(p.numel() for p in base.base_model.parameters())}, adapter params {n_ad}")


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------

def load(model_dir, adapter_dir, **config_overrides):
    m = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32,
                                             **config_overrides).eval()
    assert m.config._attn_implementation == "eager"
    # generate() fills unset fields of the passed GenerationConfig from model.generation_config (built from
    # config.json: eos_token_id 2): clear it there too, so eos never ends generation
    m.generation_config.eos_token_id = None
    if adapter_dir is not None:
        m = PeftModel.from_pretrained(m, adapter_dir).eval()
    return m


def greedy(model, prompt, use_cache):
    gc = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, eos_token_id=None,
                          pad_token_id=PAD, use_cache=use_cache, output_logits=True, output_scores=True,
                          return_dict_in_generate=True)
    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    seq = out.sequences[0]
    assert seq[: len(prompt)].tolist() == prompt
    new = seq[len(prompt):].tolist()
    assert len(new) == NEW_TOKENS, (len(new), new)
    logits = torch.stack([l[0] for l in out.logits])        # raw logits [24, vocab]
    scores = torch.stack([s[0] for s in out.scores])        # after logits processors
    assert torch.equal(logits, scores), "a logits processor changed the scores"
    assert logits.argmax(-1).tolist() == new
    top2 = logits.topk(2, dim=-1).values
    gaps = top2[:, 0] - top2[:, 1]
    return new, logits, gaps, out.past_key_values


def cache_desc(pkv):
    if pkv is None:
        return "none"
    layers = getattr(pkv, "layers", None)
    if layers is None:
        return type(pkv).__name__
    return type(pkv).__name__ + "[" + ", ".join(
        f"{type(l).__name__}" + (f"(window {l.sliding_window}, kept {l.keys.shape[-2]})"
                                 if hasattr(l, "sliding_window") else f"(kept {l.keys.shape[-2]})")
        for l in layers) + "]"


def prompt_for(seed, length):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (length,), generator=gen).tolist()

CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                   "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")


def make_chatml_tokenizer(d):
    """A character-level tokenizer for the vocab-96 models, with ChatML's special tokens and template:
    id 0 = '\\n', ids 1..93 = chr(32..124), 94 = <|im_start|>, 95 = <|im_end|> (EOS and PAD). Prints
    transformers' apply_chat_template ids for the conversation tests/generate.rs checks."""
    from transformers import PreTrainedTokenizerFast
    os.makedirs(d, exist_ok=True)
    chars = ["\n"] + [chr(c) for c in range(32, 125)]
    vocab = {c: i for i, c in enumerate(chars)}
    specials = (("<|im_start|>", 94), ("<|im_end|>", 95))
    vocab.update(dict(specials))
    added = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
             for t, i in specials]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                     "vocab": vocab, "merges": []}}
    with open(os.path.join(d, "tokenizer.json"), "w") as fh:
        json.dump(tok, fh, indent=1, ensure_ascii=False)
    cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE,
           "tokenizer_class": "PreTrainedTokenizerFast"}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    t = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), eos_token="<|im_end|>",
                                pad_token="<|im_end|>")
    t.chat_template = CHATML_TEMPLATE
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    log("chatml: apply_chat_template ids", t.apply_chat_template(msgs, tokenize=True, return_dict=False))


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT writes target_modules from a Python set: fix the hash seed so the bytes are reproducible
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    here = os.path.dirname(os.path.abspath(__file__))
    fixtures = os.path.abspath(os.path.join(here, "..", "tests", "fixtures"))
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(fixtures, "generate"))
    os.makedirs(out, exist_ok=True)
    log("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
    make_llama(os.path.join(out, "llama"))
    make_chatml_tokenizer(os.path.join(out, "chatml_tokenizer"))

    def local_dir(rel):   # generate/... lives in OUT_DIR, families/... in the repository
        return os.path.join(out, rel[len("generate/"):]) if rel.startswith("generate/") else os.path.join(fixtures, rel)

    cases = []
    for mi, (name, rel) in enumerate(MODELS):
        model_dir, adapter_dir = local_dir(rel + "/model"), local_dir(rel + "/adapter")
        for use_adapter in (False, True):
            m = load(model_dir, adapter_dir if use_adapter else None)
            merged = load(model_dir, adapter_dir).merge_and_unload().eval() if use_adapter else None
            window = getattr(m.config, "sliding_window", None)
            if getattr(m.config, "use_sliding_window", True) is False:   # qwen2/qwen3: ignored (None in config)
                assert window is None, window
            variants = {}
            if window is not None:   # the same weights with the window off, and one too wide (W + 1)
                assert window == 4, window
                ad = adapter_dir if use_adapter else None
                variants = {"no window": load(model_dir, ad, sliding_window=NO_WINDOW),
                            f"window {window + 1}": load(model_dir, ad, sliding_window=window + 1)}
                for v in variants.values():
                    assert v.config.sliding_window != window
            kind = "adapter" if use_adapter else "base"
            for k, plen in enumerate(PROMPT_LENS):
                for attempt in range(MAX_ATTEMPTS):
                    seed = 4000 + 1000 * mi + 100 * k + attempt
                    prompt = prompt_for(seed, plen)
                    new, logits, gaps, pkv = greedy(m, prompt, use_cache=True)
                    why = []
                    if gaps.min().item() < MIN_GAP:
                        why.append(f"min_gap {gaps.min().item():.2e} < {MIN_GAP}")
                    if len(set(new)) < MIN_DISTINCT:
                        why.append(f"{len(set(new))} distinct new ids")
                    for vname, v in variants.items():
                        if not why and greedy(v, prompt, use_cache=True)[0] == new:
                            why.append(f"same tokens with {vname}")
                    if not why:
                        break
                    log(f"  {name}_{kind}_{k}: seed {seed}: {'; '.join(why)} -> next seed")
                else:
                    raise RuntimeError(f"no acceptable prompt for {name}_{kind}_{k}")
                new_nc, logits_nc, _, _ = greedy(m, prompt, use_cache=False)
                assert new_nc == new, (name, kind, k, new, new_nc)
                d_nc = (logits - logits_nc).abs().max().item()
                d_mg = float("nan")
                if merged is not None:
                    new_mg, logits_mg, _, _ = greedy(merged, prompt, use_cache=True)
                    assert new_mg == new, (name, kind, k, new, new_mg)
                    d_mg = (logits - logits_mg).abs().max().item()
                case = {"name": f"{name}_{kind}_{k}", "model": rel + "/model",
                        "adapter": rel + "/adapter" if use_adapter else None, "prompt": prompt,
                        "new_tokens": new, "min_gap": round(gaps.min().item(), 6), "seed": seed}
                cases.append(case)
                log(f"{case['name']:22s} seed {seed} min_gap {gaps.min().item():.4f} (step {gaps.argmin().item()}) "
                    f"|cache-nocache| {d_nc:.1e} |merged| {d_mg:.1e} new {new}")
                if k == 0:
                    log(f"  cache after generate: {cache_desc(pkv)}")
    with open(os.path.join(out, "cases.json"), "w") as fh:
        fh.write("[\n" + ",\n".join("  " + json.dumps(c) for c in cases) + "\n]\n")
    log(f"\n{len(cases)} cases; smallest min_gap {min(c['min_gap'] for c in cases)}")
    total = 0
    for root, _, files in os.walk(out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    log(f"total size of {out}: {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
