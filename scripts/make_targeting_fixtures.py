"""Golden fixtures of PEFT's LoRA/DoRA module-selection semantics (target_modules, exclude_modules,
layers_to_transform / layers_pattern, rank_pattern / alpha_pattern, "all-linear").

For every (model, spec, use_dora) case this script builds a fresh copy of a tiny checkpoint, calls
`get_peft_model(model, LoraConfig(**spec))` and records which modules PEFT wrapped, each wrapped module's
r / lora_alpha, `get_nb_trainable_parameters()`, the warnings PEFT emitted, and the exception (if any).

Models (loaded from the repository, no network):
  tiny_llama  tests/fixtures/peft/tiny_llama_dora/model   LlamaForCausalLM, 2 layers, untied lm_head
  qwen2_tied  tests/fixtures/families/qwen2_tied/model    Qwen2ForCausalLM, 2 layers, tie_word_embeddings=True

Output: tests/fixtures/targeting/peft_targeting.json (see tests/fixtures/targeting/README.md).

Every PEFT result is also cross-checked against `reference_select` below, an independent re-statement of the
rules documented in the README; the script fails if the two disagree, so the README describes what the
goldens actually encode.

Usage: /work/pyenv/bin/python scripts/make_targeting_fixtures.py [OUT_DIR]
       (default: tests/fixtures/targeting)
"""
import json
import os
import re
import sys
import tempfile
import warnings

import torch
import peft
import transformers
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoConfig, AutoModelForCausalLM

torch.set_default_dtype(torch.float32)
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "tiny_llama": os.path.join(ROOT, "tests/fixtures/peft/tiny_llama_dora/model"),
    "qwen2_tied": os.path.join(ROOT, "tests/fixtures/families/qwen2_tied/model"),
}
BASE = dict(r=4, lora_alpha=8)

# (id, spec, dora variants, models, extra, note). `spec` is passed as LoraConfig(**BASE, **spec, use_dora=...).
# Dict order in rank_pattern/alpha_pattern is significant (first matching key wins) and is kept in the JSON.
CASES = [
    ("1", dict(target_modules=["q_proj", "v_proj"]), (False, True), None, False, "suffix list"),
    ("2", dict(target_modules="all-linear"), (False, True), None, False, "all-linear shorthand"),
    ("3", dict(target_modules=r".*\.(q|k)_proj"), (False,), None, False, "regex string, re.fullmatch"),
    ("4", dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               exclude_modules=["down_proj"]), (False,), None, False, "list exclude"),
    ("5", dict(target_modules="all-linear", exclude_modules=r".*\.1\..*"), (False,), None, False,
     "regex exclude (fullmatch) on top of all-linear"),
    ("6", dict(target_modules=["q_proj", "v_proj", "up_proj"], layers_to_transform=[1]), (False,), None, False,
     "layers_to_transform list, no layers_pattern"),
    ("7", dict(target_modules=["q_proj", "v_proj"], layers_to_transform=0, layers_pattern="layers"), (False,),
     None, False, "layers_to_transform int + layers_pattern"),
    ("8", dict(target_modules=["q_proj", "v_proj", "o_proj"],
               rank_pattern={"o_proj": 8, r"model\.layers\.1\.self_attn\.q_proj": 2},
               alpha_pattern={"v_proj": 32}), (False,), None, False, "rank_pattern / alpha_pattern"),
    ("9", dict(target_modules=["self_attn.q_proj"]), (False,), None, False, "multi-component suffix"),
    ("10", dict(target_modules=["model.layers.0.mlp.up_proj"]), (False,), None, False, "full module path"),
    ("11", dict(target_modules=["embed_tokens", "q_proj"]), (False,), None, False, "embedding in the list"),
    ("12", dict(target_modules=["nonexistent"]), (False,), None, False, "nothing matches -> error"),
    ("13", dict(target_modules="all-linear", modules_to_save=None), (False,), ("qwen2_tied",), False,
     "all-linear on the tied model: lm_head (output embedding) must be excluded"),
    # ---- extras (not in the original brief); they pin down corner cases of the same rules ----
    ("x1", dict(target_modules=r".*\.q_proj", layers_to_transform=[1]), (False,), None, True,
     "regex target + layers_to_transform is rejected by LoraConfig.__post_init__"),
    ("x2", dict(target_modules=["model.layers.0.mlp.up_proj", "v_proj"], layers_to_transform=[1]), (False,),
     None, True, "an exact full-name hit bypasses the layers_to_transform filter; suffix hits are filtered"),
    ("x3", dict(target_modules=["q_proj"], rank_pattern={"q_proj": 8, r"model\.layers\.0\.self_attn\.q_proj": 2}),
     (False,), None, True, "two rank_pattern keys match layer 0 q_proj: the first key in dict order wins"),
    ("x4", dict(target_modules=["q_proj"], rank_pattern={r"model\.layers\.0\.self_attn\.q_proj": 2, "q_proj": 8}),
     (False,), None, True, "same keys, reversed order: the first key in dict order wins"),
    ("x5", dict(target_modules=["q_proj"], rank_pattern={"proj": 16, r"layers\.1\..*": 2, "layers": 5}),
     (False,), None, True, "rank_pattern keys must match a whole dot-aligned suffix: 'proj' and 'layers' do not "
     "match, a regex key that spans components does"),
    ("x6", dict(target_modules="all-linear", exclude_modules=["layers.1.mlp"]), (False,), None, True,
     "exclusion is per module name, not hierarchical: excluding a parent does not exclude its children"),
    ("x7", dict(target_modules=["q"]), (False,), None, True, "no substring matching: 'q' does not match q_proj"),
    ("x8", dict(target_modules="ALL-Linear"), (False,), None, True, "the all-linear shorthand is case-insensitive"),
    ("x9", dict(target_modules=r".*norm"), (False,), ("tiny_llama",), True,
     "a regex that matches only unsupported module types (RMSNorm) raises"),
    ("x10", dict(target_modules=["q_proj"], layers_to_transform=[]), (False,), None, True,
     "an empty layers_to_transform list means no layer filtering"),
    ("x11", dict(target_modules=["q_proj", "v_proj"], exclude_modules=["q_proj", "v_proj"]), (False,), None, True,
     "everything excluded -> error"),
    ("x12", dict(target_modules=["q_proj"], layers_to_transform=[0], layers_pattern="blocks"), (False,), None,
     True, "layers_pattern that does not occur in the names -> nothing matches -> error"),
    ("x13", dict(target_modules=r"model\.layers\.0\.self_attn\.q_proj|lm_head"), (False,), None, True,
     "regex with alternation is fullmatched against the whole name; it can target lm_head explicitly"),
]


def load(model_key, num_layers=None):
    if num_layers is None:
        return AutoModelForCausalLM.from_pretrained(MODELS[model_key], dtype=torch.float32)
    # Same config with more layers, random init: only module names/shapes matter for targeting.
    cfg = AutoConfig.from_pretrained(MODELS[model_key])
    cfg.num_hidden_layers = num_layers
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        cfg.layer_types = [cfg.layer_types[0]] * num_layers
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def jsonable_spec(spec):
    out = {}
    for k, v in spec.items():
        out[k] = list(v) if isinstance(v, (set, tuple)) else v
    return out


# ------------------------------------------------------------------------------------------------------------
# Independent re-statement of the selection rules (see README). Used only to cross-check PEFT's behaviour.
# ------------------------------------------------------------------------------------------------------------
SUPPORTED = (torch.nn.Linear, torch.nn.Embedding)


def _layer_index(key, layers_pattern):
    if not layers_pattern:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        pats = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        m = None
        for p in pats:
            m = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
            if m:
                break
    return int(m.group("idx")) if m else None


def _pattern_value(patterns, key, default):
    for pk, val in patterns.items():  # dict order; first match wins
        if re.match(rf"(.*\.)?({pk})$", key):
            return val
    return default


def reference_select(model, spec, use_dora):
    """Returns (modules, ranks, alphas, lora_param_count, error) following the README rules."""
    named = [(n, m) for n, m in model.named_modules() if n]
    target = spec.get("target_modules")
    excl = spec.get("exclude_modules")
    lt = spec.get("layers_to_transform")
    lp = spec.get("layers_pattern")
    if isinstance(target, str) and (lt is not None or lp is not None):
        return None, None, None, None, "ValueError"
    if isinstance(target, str) and target.lower() == "all-linear":
        out_emb = model.get_output_embeddings()
        out_name = next((n for n, m in named if m is out_emb), None)
        target = {n for n, m in named if isinstance(m, torch.nn.Linear) and n != out_name}
    use_layers = lt is not None and (len(lt) != 0 if isinstance(lt, list) else True)
    chosen, excluded, unmatched = [], [], []
    for n, m in named:
        if excl and ((isinstance(excl, str) and re.fullmatch(excl, n)) or
                     (not isinstance(excl, str) and (n in excl or any(n.endswith("." + e) for e in excl)))):
            excluded.append(n)
            continue
        if isinstance(target, str):
            hit = re.fullmatch(target, n) is not None
        elif n in target:
            hit = True  # exact full-name hit: no layer filtering
        else:
            hit = any(n.endswith("." + t) for t in target)
            if hit and use_layers:
                idx = _layer_index(n, lp)
                hit = idx is not None and (idx == lt if isinstance(lt, int) else idx in lt)
        (chosen if hit else unmatched).append(n)
    if not chosen:
        return [], {}, {}, 0, "NoMatchingPeftModuleError"
    mods = dict(named)
    if any(not isinstance(mods[n], SUPPORTED) for n in chosen):
        return None, None, None, None, "ValueError"
    ranks = {n: _pattern_value(spec.get("rank_pattern") or {}, n, BASE["r"]) for n in chosen}
    alphas = {n: _pattern_value(spec.get("alpha_pattern") or {}, n, BASE["lora_alpha"]) for n in chosen}
    count = 0
    for n in chosen:
        m, r = mods[n], ranks[n]
        if isinstance(m, torch.nn.Embedding):
            count += r * (m.num_embeddings + m.embedding_dim)  # lora_embedding_A [r, V], lora_embedding_B [D, r]
        else:
            count += r * (m.in_features + m.out_features)  # lora_A [r, in], lora_B [out, r]
            if use_dora:
                count += m.out_features  # lora_magnitude_vector [out]
    return sorted(chosen), ranks, alphas, count, None


# ------------------------------------------------------------------------------------------------------------


def run_case(model_key, spec, use_dora, save_config=False, num_layers=None):
    model = load(model_key, num_layers)
    base_total = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights
    ref = reference_select(model, spec, use_dora)
    rec = dict(modules=[], ranks={}, alphas={}, trainable=None, total=None, error=None, warnings=[])
    saved = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cfg = LoraConfig(**BASE, **spec, use_dora=use_dora)
            pm = get_peft_model(model, cfg)
        except Exception as e:  # noqa: BLE001 -- recording the error is the point
            rec["error"] = f"{type(e).__name__}: {e}"
            pm = None
    rec["warnings"] = sorted({str(w.message) for w in caught
                              if "peft" in (w.filename or "") or "peft" in str(w.message).lower()
                              or "target" in str(w.message).lower()})
    if pm is not None:
        inner = pm.base_model.model
        for name, mod in inner.named_modules():
            if isinstance(mod, BaseTunerLayer):
                rec["modules"].append(name)
                rec["ranks"][name] = int(mod.r["default"])
                rec["alphas"][name] = mod.lora_alpha["default"]
        rec["modules"].sort()
        rec["ranks"] = dict(sorted(rec["ranks"].items()))
        rec["alphas"] = dict(sorted(rec["alphas"].items()))
        assert rec["modules"] == sorted(pm.base_model.targeted_module_names), (
            rec["modules"], pm.base_model.targeted_module_names)
        tr, tot = pm.get_nb_trainable_parameters()
        rec["trainable"], rec["total"] = int(tr), int(tot)
        if save_config:
            with tempfile.TemporaryDirectory() as d:
                pm.save_pretrained(d)
                with open(os.path.join(d, "adapter_config.json")) as f:
                    saved = json.load(f)
    # ---- cross-check against the reference rules ----
    r_mods, r_ranks, r_alphas, r_count, r_err = ref
    if r_err is not None:
        assert rec["error"] is not None and rec["error"].startswith(r_err + ":"), (model_key, spec, rec["error"], r_err)
    else:
        assert rec["error"] is None, (model_key, spec, rec["error"])
        assert rec["modules"] == r_mods, (model_key, spec, rec["modules"], r_mods)
        assert rec["ranks"] == r_ranks and rec["alphas"] == r_alphas, (model_key, spec, rec["ranks"], r_ranks)
        assert rec["trainable"] == r_count, (model_key, spec, rec["trainable"], r_count)
        assert rec["total"] == base_total + r_count, (model_key, spec, rec["total"], base_total, r_count)
    rec["base_params"] = int(base_total)
    return rec, saved


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/fixtures/targeting")
    os.makedirs(out_dir, exist_ok=True)
    cases, saved_configs = [], []
    for cid, spec, doras, models, extra, note in CASES:
        for model_key in models or MODELS:
            for use_dora in doras:
                rec, saved = run_case(model_key, spec, use_dora, save_config=(cid == "2"))
                case = dict(id=cid, model=model_key, spec=jsonable_spec(spec), use_dora=use_dora, extra=extra,
                            note=note, modules=rec["modules"], ranks=rec["ranks"], alphas=rec["alphas"],
                            trainable=rec["trainable"], total=rec["total"], base_params=rec["base_params"],
                            error=rec["error"], warnings=rec["warnings"])
                cases.append(case)
                if saved is not None:
                    raw = saved["target_modules"]
                    saved["target_modules"] = sorted(raw)  # written from a Python set: order is arbitrary
                    saved["base_model_name_or_path"] = os.path.relpath(MODELS[model_key], ROOT)
                    saved_configs.append(dict(model=model_key, use_dora=use_dora,
                                              target_modules_type=type(raw).__name__,
                                              adapter_config=saved))
                status = rec["error"] or f"{len(rec['modules'])} modules, trainable={rec['trainable']}"
                print(f"[{cid:>3}] {model_key:10s} dora={int(use_dora)}  {status}")
    # Extra: with >= MIN_TARGET_MODULES_FOR_OPTIMIZATION (20) resolved targets, inject_adapter condenses the
    # all-linear name set to minimal suffixes before saving. The 2-layer fixtures (14 linears) stay below that,
    # so show it on 3-layer random-init variants of the same configs (21 linears).
    minimized = []
    for model_key in MODELS:
        rec, saved = run_case(model_key, dict(target_modules="all-linear"), False, save_config=True, num_layers=3)
        raw = saved["target_modules"]
        minimized.append(dict(model=model_key + "_3layers", num_hidden_layers=3, use_dora=False,
                              adapted_modules=rec["modules"], target_modules_saved=sorted(raw),
                              target_modules_type=type(raw).__name__))
        print(f"[2/3L] {model_key:10s} saved target_modules={sorted(raw)}")
    golden = {
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "defaults": BASE,
        "cases": cases,
        "saved_all_linear_configs": saved_configs,
        "saved_all_linear_minimized_extra": minimized,
    }
    path = os.path.join(out_dir, "peft_targeting.json")
    with open(path, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
