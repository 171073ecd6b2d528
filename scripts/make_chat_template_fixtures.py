"""Golden chat-template renderings for `tests/chat_templates.rs`, made with HF transformers.

Every template listed in TEMPLATES (the `.jinja` files of `tests/fixtures/chat_templates/`) is
rendered over every conversation in CONVERSATIONS, with `add_generation_prompt` false and true, by
transformers' own `apply_chat_template(..., tokenize=False)` on a tokenizer carrying the
template's special tokens. A template that refuses a conversation (`raise_exception`) is stored
with its message. For templates with `{% generation %}` blocks, the text of each block that
`render_jinja_template(..., return_assistant_tokens_mask=True)` reports is stored too.
`strftime_now` sees the fixed time NOW. The output is deterministic:

    python3 scripts/make_chat_template_fixtures.py

writes `tests/fixtures/chat_templates/expected.json` (transformers 5.x and jinja2 >= 3.1.6).

Other templates (real ones, e.g. the `.jinja` files of a llama.cpp checkout's `models/templates`,
or `chat_template.jinja` files of HF model folders) can be checked the same way without adding
them to the repository:

    python scripts/make_chat_template_fixtures.py --templates DIR --out OUT

where `DIR/templates.json` lists them as {"name": {"file": "x.jinja", "format": "...",
"special_tokens": {"bos": ..., "eos": ..., "unk": ..., "pad": ...}}}; OUT receives the templates
and `expected.json`, and `ADAPTERS_CHAT_FIXTURES=OUT cargo test --test chat_templates` compares
the Rust renderings with them too.
"""

import argparse
import json
import shutil
import sys
from datetime import datetime as _datetime
from pathlib import Path

import jinja2
import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "chat_templates"

# The time `strftime_now` sees: (year, month, day, hour, minute, second).
NOW = (2024, 7, 26, 9, 5, 3)

# Templates written for these tests, each in the layout of a model family (the real templates of
# those families can be checked with --templates, see above).
TEMPLATES = {
    "llama3": {
        "file": "llama3.jinja",
        "format": "Llama 3.x (dated system header, strftime_now)",
        "special_tokens": {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "unk": None, "pad": None},
    },
    "qwen2_5": {
        "file": "qwen2_5.jinja",
        "format": "Qwen2.5 (ChatML with a default system message)",
        "special_tokens": {"bos": None, "eos": "<|im_end|>", "unk": None, "pad": "<|endoftext|>"},
    },
    "qwen3": {
        "file": "qwen3.jinja",
        "format": "Qwen3 (ChatML, <think> kept only after the last user query)",
        "special_tokens": {"bos": None, "eos": "<|im_end|>", "unk": None, "pad": "<|endoftext|>"},
    },
    "mistral": {
        "file": "mistral.jinja",
        "format": "Mistral v0.3 / Nemo ([INST], system in the last user turn, alternation check)",
        "special_tokens": {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": None},
    },
    "gemma2": {
        "file": "gemma2.jinja",
        "format": "Gemma 2 (no system role)",
        "special_tokens": {"bos": "<bos>", "eos": "<eos>", "unk": "<unk>", "pad": "<pad>"},
    },
    "gemma3": {
        "file": "gemma3.jinja",
        "format": "Gemma 3 (system text opens the first user turn)",
        "special_tokens": {"bos": "<bos>", "eos": "<eos>", "unk": "<unk>", "pad": "<pad>"},
    },
    "phi3": {
        "file": "phi3.jinja",
        "format": "Phi-3 / Phi-3.5 (<|end|> turns, EOS after the conversation)",
        "special_tokens": {"bos": "<s>", "eos": "<|endoftext|>", "unk": "<unk>", "pad": "<|endoftext|>"},
    },
    "zephyr": {
        "file": "zephyr.jinja",
        "format": "Zephyr (line-per-tag template relying on trim_blocks / lstrip_blocks)",
        "special_tokens": {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "</s>"},
    },
    "deepseek_r1": {
        "file": "deepseek_r1.jinja",
        "format": "DeepSeek-R1 distills (reasoning dropped from answers)",
        "special_tokens": {
            "bos": "<｜begin▁of▁sentence｜>",
            "eos": "<｜end▁of▁sentence｜>",
            "unk": None,
            "pad": "<｜end▁of▁sentence｜>",
        },
    },
    "chatml_generation": {
        "file": "chatml_generation.jinja",
        "format": "ChatML with {% generation %} blocks",
        "special_tokens": {"bos": None, "eos": "<|im_end|>", "unk": None, "pad": None},
    },
    "zephyr_generation": {
        "file": "zephyr_generation.jinja",
        "format": "Zephyr with {% generation %} blocks (each block ends with a newline)",
        "special_tokens": {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": None},
    },
    "features": {
        "file": "features.jinja",
        "format": "not a model's: prints the Jinja / Python features templates use",
        "special_tokens": {"bos": "<s>", "eos": "</s>", "unk": None, "pad": "<pad>"},
    },
}


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "single_turn": [m("user", "Hello! Who are you?")],
    "multi_turn_system": [
        m("system", "You are a helpful assistant. Answer briefly."),
        m("user", "What is 2 + 2?"),
        m("assistant", "2 + 2 = 4."),
        m("user", "And times 3?"),
        m("assistant", "(2 + 2) × 3 = 12."),
    ],
    "multi_turn_no_system": [
        m("user", "Name a colour."),
        m("assistant", "Blue."),
        m("user", "Another one?"),
        m("assistant", "Green."),
    ],
    "unicode": [
        m("system", "  Réponds en français, s'il te plaît.\n"),
        m(
            "user",
            "Quotes: \"double\" 'single' `back` \\ backslash\n\tTabbed; emoji 😀; CJK 日本語; "
            "{{ not a tag }} {% raw %} <b>&amp;</b>\u00a0\n",
        ),
        m("assistant", "  Voilà — «OK».\n\nLine 2\\n (a literal backslash-n)\r\n  "),
    ],
    "thinking": [
        m("user", "Is 17 prime?"),
        m("assistant", "<think>\nCheck divisors up to 4.\n</think>\n\nYes, 17 is prime."),
        m("user", "And 21?"),
        m("assistant", "<think>\n21 = 3 × 7.\n</think>\n\nNo: 21 = 3 × 7."),
    ],
    "system_only_prompt": [m("system", "Be terse."), m("user", "Hi")],
    "non_alternating": [m("user", "First."), m("user", "Second."), m("assistant", "Answer.")],
}


class FixedDatetime(_datetime):
    """`datetime` whose `now()` is NOW, for transformers' `strftime_now`."""

    @classmethod
    def now(cls, tz=None):
        return cls(*NOW)


def tokenizer_for(special):
    """A word-level tokenizer carrying `special` (only its special tokens matter here)."""
    vocab = {"[UNK]": 0}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    kwargs = {f"{k}_token": v for k, v in special.items() if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def render(tokenizer, source, messages, add_generation_prompt):
    """apply_chat_template's text, or the error it raises."""
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except jinja2.exceptions.TemplateError as e:
        # raise_exception raises a bare TemplateError; jinja2's own errors are subclasses.
        raised = type(e) is jinja2.exceptions.TemplateError
        return {"error": str(e), "raised": raised}
    # The same through transformers' lower-level renderer, as a cross-check.
    rendered, _ = chat_template_utils.render_jinja_template(
        conversations=[messages],
        chat_template=source,
        add_generation_prompt=add_generation_prompt,
        **tokenizer.special_tokens_map,
    )
    assert rendered[0] == text, "apply_chat_template and render_jinja_template disagree"
    return {"text": text}


def generation_spans(tokenizer, source, messages):
    rendered, indices = chat_template_utils.render_jinja_template(
        conversations=[messages],
        chat_template=source,
        return_assistant_tokens_mask=True,
        **tokenizer.special_tokens_map,
    )
    text = rendered[0]
    return {"text": text, "spans": [text[a:b] for a, b in indices[0]]}


def build(templates, template_dir, out_dir):
    chat_template_utils.datetime = FixedDatetime
    out = {
        "about": "Made by scripts/make_chat_template_fixtures.py: transformers' apply_chat_template renderings",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "now": list(NOW),
        "conversations": CONVERSATIONS,
        "templates": {},
        "renderings": [],
        "generation_spans": [],
    }
    for name, info in templates.items():
        source = (template_dir / info["file"]).read_text(encoding="utf-8")
        if out_dir != template_dir:
            shutil.copyfile(template_dir / info["file"], out_dir / info["file"])
        special = {k: info["special_tokens"].get(k) for k in ("bos", "eos", "unk", "pad")}
        has_generation = "{% generation %}" in source or "{%- generation %}" in source
        out["templates"][name] = {
            "file": info["file"],
            "format": info.get("format", ""),
            "special_tokens": special,
            "generation_blocks": has_generation,
        }
        tokenizer = tokenizer_for(special)
        for conv_name, messages in CONVERSATIONS.items():
            for gen in (False, True):
                case = {"template": name, "conversation": conv_name, "add_generation_prompt": gen}
                case.update(render(tokenizer, source, messages, gen))
                out["renderings"].append(case)
            if has_generation and messages[-1]["role"] == "assistant":
                try:
                    spans = generation_spans(tokenizer, source, messages)
                except jinja2.exceptions.TemplateError:
                    continue
                out["generation_spans"].append({"template": name, "conversation": conv_name, **spans})
    path = out_dir / "expected.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum(1 for r in out["renderings"] if "error" in r)
    print(f"{path}: {len(templates)} templates, {len(out['renderings'])} renderings ({errors} errors), "
          f"{len(out['generation_spans'])} generation-span cases")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--templates", type=Path, help="folder with templates.json and the templates it lists")
    parser.add_argument("--out", type=Path, help="output folder (default: the fixtures folder)")
    args = parser.parse_args()
    if args.templates:
        templates = json.loads((args.templates / "templates.json").read_text(encoding="utf-8"))
        out_dir = args.out or sys.exit("--templates needs --out")
        out_dir.mkdir(parents=True, exist_ok=True)
        build(templates, args.templates, out_dir)
    else:
        build(TEMPLATES, FIXTURES, args.out or FIXTURES)


if __name__ == "__main__":
    main()
