#!/usr/bin/env python3
"""Checks the GGUF path against the Python side (not run in CI).

Given a base GGUF file and the output folder of `finetune --model BASE.gguf --out OUT`:

1. transformers loads BASE.gguf (dequantized, q/k un-permuted) and PEFT loads OUT/adapter over it
   with no missing or unexpected keys: the adapter trained over the quantized base is an HF adapter.
2. gguf-py reads OUT/merged.gguf: same tensor names and types as BASE.gguf, metadata kept.
3. transformers loads OUT/merged.gguf; its logits equal PEFT's (adapter over the dequantized base)
   within the re-quantization error, printed.

usage: python scripts/gguf_roundtrip.py BASE.gguf OUT
"""
import os
import sys

import gguf
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def load(path):
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


def main():
    base, out = sys.argv[1], sys.argv[2]
    merged = os.path.join(out, "merged.gguf")
    model = load(base)
    peft = PeftModel.from_pretrained(model, os.path.join(out, "adapter")).eval()
    # Strict: every adapter key of the file was loaded into a module.
    from safetensors.torch import load_file

    saved = load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))
    state = peft.state_dict()
    missing = [k for k in saved if k.replace(".weight", ".default.weight").replace("lora_magnitude_vector", "lora_magnitude_vector.default.weight") not in state and k not in state]
    print(f"adapter tensors: {len(saved)}, not found in the PEFT model: {missing}")
    assert not missing

    a, b = gguf.GGUFReader(base), gguf.GGUFReader(merged)
    ta = {t.name: t.tensor_type.name for t in a.tensors}
    tb = {t.name: t.tensor_type.name for t in b.tensors}
    assert ta == tb, (ta, tb)
    lost = sorted(set(a.fields) - set(b.fields) - {"general.alignment"})
    print(f"gguf-py: {len(tb)} tensors, same types; metadata keys lost: {lost}")
    assert not [k for k in lost if not k.startswith("GGUF.")]

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    with torch.no_grad():
        want = peft(ids).logits
        got = load(merged)(ids).logits
        base_logits = model.get_base_model()(ids).logits if hasattr(model, "get_base_model") else None
    err = (got - want).abs().max().item() / want.abs().max().item()
    print(f"merged.gguf (transformers) vs PEFT adapter over the dequantized base: max rel diff {err:.3e}")


if __name__ == "__main__":
    main()
