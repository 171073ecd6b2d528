#!/usr/bin/env python3
"""Checks with transformers + PEFT what tests/families.rs::export_for_python_peft writes (not run by
CI): for each family (Qwen2 tied / untied, Qwen3, Mistral), an adapter we trained loads with
`PeftModel.from_pretrained` with no missing or unexpected keys and gives our logits, and our merged
checkpoint loads with `AutoModelForCausalLM` and gives them too.

usage:
  FAMILIES_ROUNDTRIP_OUT=/tmp/fam cargo test --test families export_for_python_peft
  python scripts/families_roundtrip.py /tmp/fam
"""
import os
import sys

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    root = sys.argv[1]
    worst = 0.0
    for case in sorted(os.listdir(root)):
        d = os.path.join(root, case)
        model_dir = open(os.path.join(d, "model_dir")).read().strip()
        ours = load_file(os.path.join(d, "ours.safetensors"))
        ids = ours["input_ids"].long()
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
        peft = PeftModel.from_pretrained(base, os.path.join(d, "adapter")).eval()
        saved = load_file(os.path.join(d, "adapter", "adapter_model.safetensors"))
        state = get_peft_model_state_dict(peft)
        missing = sorted(set(saved) - set(state))
        unexpected = sorted(set(state) - set(saved))
        assert not missing and not unexpected, (case, missing, unexpected)
        for k, v in saved.items():
            assert torch.equal(state[k], v), (case, k)
        with torch.no_grad():
            got = peft(ids).logits
            merged = AutoModelForCausalLM.from_pretrained(
                os.path.join(d, "merged"), dtype=torch.float32, attn_implementation="eager"
            ).eval()(ids).logits
        scale = ours["logits"].abs().max().item()
        e1 = (got - ours["logits"]).abs().max().item() / scale
        e2 = (merged - ours["logits"]).abs().max().item() / scale
        worst = max(worst, e1, e2)
        print(f"{case}: {len(saved)} adapter tensors, no missing/unexpected keys; "
              f"PEFT vs ours {e1:.2e}, our merged checkpoint in transformers vs ours {e2:.2e}; "
              f"{base.__class__.__name__}")
    assert worst < 1e-5, worst
    print(f"all families: max relative difference {worst:.2e}")


if __name__ == "__main__":
    main()
