"""Golden cases for `Tokenizer::from_gguf_metadata`: small tokenizers in GGUF files, and the ids
transformers gives for them.

Offline and deterministic: each tokenizer is trained here on the text below, written into a
minimal llama GGUF with the tokenizer keys as llama.cpp's `convert_hf_to_gguf.py` writes them
(`_set_vocab_gpt2` / `_set_vocab_sentencepiece`, with gguf-py's `SpecialVocab`), then loaded back
with `AutoTokenizer.from_pretrained(folder, gguf_file=NAME)`, whose ids and decoded texts are
recorded.

Usage: /work/pyenv/bin/python scripts/make_gguf_tokenizer_fixtures.py [OUT_DIR]
       (OUT_DIR defaults to tests/fixtures/gguf_tokenizer)

Cases:
  bpe_default   byte-level BPE ("gpt2"), pre "default" (GPT-2's split), BOS/EOS/PAD, add_bos
  bpe_llama3    byte-level BPE ("gpt2"), pre "llama-bpe" (Llama 3's split), BOS/EOS, add_bos,
                a chat template
  spm_llama     SentencePiece BPE with byte fallback ("llama"), no merges in the file (as
                llama.cpp writes it), BOS/EOS/UNK, add_bos, two added tokens, one [PAD] slot
  spm_phi3      the same vocabulary with architecture "phi3" (transformers' phi3_tokenizer: the
                prefix space from a normalizer, no pre-tokenizer)
Each has one USER_DEFINED (`<think>`) and one extra CONTROL token, and a test string that holds them.
"""
import json
import os
import sys
import tempfile

import numpy as np

import gguf
import sentencepiece as spm
import tokenizers
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

# gguf-py's token types (as convert_hf_to_gguf.py's SentencePieceTokenTypes)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.
Tokenizers split text into pieces, and a model learns from the ids of those pieces.
Fine-tuning with LoRA adds small low-rank matrices to a frozen model: only they are trained.
DoRA splits each weight into a magnitude and a direction, and adapts the direction.
In 2024 the team trained 3 models for 12 hours on 8 GPUs, at a learning rate of 0.0002.
Numbers: 1 2 3 10 20 30 100 200 300 1234 56789 3.14159 2.71828 42.
Don't panic! It's fine, isn't it? We'll see: they're here, you've won, I'm done, she'd go.
    Indented code: def main():
        return x + y * (z - 1)
Email: someone@example.com, web: https://example.com/path?q=1&r=2 #tag $5 %20 ^_^ ~ `tick`
Unicode: naïve café, résumé, Straße, über, façade, jalapeño, 日本語のテキスト, 中文, 한국어, Ελληνικά, русский.
Emoji: 🙂 🚀 ✨ — dashes – and “quotes” and ‘single’ … ellipsis.
Hello world. Hello there. Hello again, world! hello, HELLO, HeLLo.
""" * 3

TEST_STRINGS = [
    "Hello world",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "     many     spaces     ",
    "line one\nline two\n\nthree\n",
    "\ttab\tseparated\r\nwindows",
    "1234567890 and 3.14159 and 2024",
    "Punctuation: hello, world! (yes?) [no] {maybe}; 'quoted' \"double\" a-b_c/d\\e",
    "don't won't I'm we'll they've",
    "naïve café 日本語 🙂",
    "Straße über Ελληνικά русский 한국어 ℕ∑∫∞",
    "CamelCaseWords and ALLCAPS and x",
    "",
    None,  # replaced per case: text with the case's control and user-defined tokens
]


def special_text(control, user):
    return f"start{control} middle <think>inner</think>{user}end"


def llama_hparams(w, vocab_size):
    w.add_context_length(128)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)


def write_gguf(path, tokenizer_keys, vocab_size, arch="llama"):
    w = gguf.GGUFWriter(path, arch)
    w.add_name("gguf-tokenizer-fixture")
    llama_hparams(w, vocab_size)
    tokenizer_keys(w)
    # one tiny tensor, so the file is a valid (if useless) model file
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- byte-level BPE ("gpt2") ----------------------------------------------------------------

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_byte_bpe(split, specials, added, vocab_size):
    tok = Tokenizer(models.BPE())
    if split == "default":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in added])
    return tok


def gpt2_case(out_dir, name, pre, specials, bos, eos, pad, extra_control, vocab_size, chat_template=None):
    """As `_set_vocab_gpt2`: get_vocab_base() (here from the tokenizers object) + SpecialVocab."""
    tok = train_byte_bpe(pre, specials + [extra_control], ["<think>", "</think>"], vocab_size)
    with tempfile.TemporaryDirectory() as hf_dir:
        tok.save(os.path.join(hf_dir, "tokenizer.json"))
        config = {"bos_token": bos, "eos_token": eos, "add_bos_token": True, "add_eos_token": False}
        if pad is not None:
            config["pad_token"] = pad
        if chat_template is not None:
            config["chat_template"] = chat_template
        with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
        special_vocab = gguf.SpecialVocab(hf_dir, load_merges=True)

    vocab = tok.get_vocab(with_added_tokens=True)
    n_vocab = max(vocab.values()) + 1
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_tokens_decoder()
    tokens, toktypes = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            toktypes.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(reverse[i])
            toktypes.append(NORMAL)

    def keys(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(toktypes)
        special_vocab.add_to_gguf(w, quiet=True)

    write_gguf(os.path.join(out_dir, f"{name}.gguf"), keys, n_vocab)
    return special_text(extra_control, eos)


# ---- SentencePiece BPE ("llama") -------------------------------------------------------------


def spm_case(out_dir, name, arch="llama"):
    """As `_set_vocab_sentencepiece`: the .model's pieces, scores and types; added tokens from
    tokenizer_config.json's added_tokens_decoder; [PADn] up to config.json's vocab_size."""
    with tempfile.TemporaryDirectory() as hf_dir:
        corpus = os.path.join(hf_dir, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write(CORPUS)
        spm.SentencePieceTrainer.train(
            input=corpus,
            model_prefix=os.path.join(hf_dir, "tokenizer"),
            model_type="bpe",
            vocab_size=700,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            hard_vocab_limit=False,
            num_threads=1,
            minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=os.path.join(hf_dir, "tokenizer.model"))
        n_sp = sp.vocab_size()
        vocab_size = n_sp + 3  # two added tokens, then one never-filled slot
        tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
        scores = [-1000.0] * vocab_size
        toktypes = [UNUSED] * vocab_size
        for i in range(n_sp):
            tokens[i] = sp.id_to_piece(i).encode("utf-8")
            scores[i] = sp.get_score(i)
            t = NORMAL
            if sp.is_unknown(i):
                t = UNKNOWN
            elif sp.is_control(i):
                t = CONTROL
            elif sp.is_unused(i):
                t = UNUSED
            elif sp.is_byte(i):
                t = BYTE
            toktypes[i] = t
        added_tokens_decoder = {
            str(n_sp): {"content": "<|im_start|>", "special": True},
            str(n_sp + 1): {"content": "<think>", "special": False},
        }
        for tid, data in added_tokens_decoder.items():
            tid = int(tid)
            toktypes[tid] = CONTROL if data["special"] else USER_DEFINED
            scores[tid] = -1000.0
            tokens[tid] = data["content"].encode("utf-8")
        config = {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": added_tokens_decoder,
        }
        with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump({"bos_token_id": 1, "eos_token_id": 2, "vocab_size": vocab_size}, f)
        special_vocab = gguf.SpecialVocab(hf_dir, n_vocab=vocab_size)
        # no tokenizer.json, so SpecialVocab reads only config.json; the add_* flags are set as
        # convert_hf_to_gguf.py's sentencepiece path gets them from tokenizer_config.json
        special_vocab.add_special_token = {"bos": True, "eos": False}
        special_vocab.special_token_ids.setdefault("unk", 0)

    def keys(w):
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(toktypes)
        special_vocab.add_to_gguf(w, quiet=True)

    write_gguf(os.path.join(out_dir, f"{name}.gguf"), keys, vocab_size, arch)
    return "start<|im_start|> middle <think>inner</think></s>end"


# ---- transformers' view ----------------------------------------------------------------------


def record(out_dir, name, special):
    tok = AutoTokenizer.from_pretrained(out_dir, gguf_file=f"{name}.gguf")
    strings = [s if s is not None else special for s in TEST_STRINGS]
    cases = []
    for s in strings:
        with_special = tok.encode(s)
        plain = tok.encode(s, add_special_tokens=False)
        cases.append(
            {
                "text": s,
                "ids": with_special,
                "ids_no_special": plain,
                "decoded": tok.decode(plain, skip_special_tokens=True),
            }
        )
    gguf_reader = gguf.GGUFReader(os.path.join(out_dir, f"{name}.gguf"))
    meta = {f.name: f for f in gguf_reader.fields.values()}

    def scalar(key):
        f = meta.get(key)
        return None if f is None else f.contents()

    summary = {
        "gguf": f"{name}.gguf",
        "model": scalar("tokenizer.ggml.model"),
        "pre": scalar("tokenizer.ggml.pre"),
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "unk_token_id": tok.unk_token_id,
        "add_bos_token": scalar("tokenizer.ggml.add_bos_token"),
        "add_eos_token": scalar("tokenizer.ggml.add_eos_token"),
        "tokenizer_class": type(tok).__name__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf_py": gguf.__version__ if hasattr(gguf, "__version__") else "see README",
        "cases": cases,
    }
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=1)
        f.write("\n")
    if os.environ.get("DUMP_BACKEND"):
        with open(os.path.join(os.environ["DUMP_BACKEND"], f"{name}.tokenizer.json"), "w") as f:
            f.write(tok.backend_tokenizer.to_str(pretty=True))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "tests", "fixtures", "gguf_tokenizer")
    os.makedirs(out_dir, exist_ok=True)
    special = gpt2_case(
        out_dir, "bpe_default", "default",
        ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"],
        "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_start|>", 700,
    )
    record(out_dir, "bpe_default", special)
    special = gpt2_case(
        out_dir, "bpe_llama3", "llama-bpe",
        ["<|begin_of_text|>", "<|end_of_text|>"],
        "<|begin_of_text|>", "<|end_of_text|>", None, "<|eot_id|>", 720,
        chat_template="{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot_id|>{% endfor %}",
    )
    record(out_dir, "bpe_llama3", special)
    special = spm_case(out_dir, "spm_llama")
    record(out_dir, "spm_llama", special)
    special = spm_case(out_dir, "spm_phi3", arch="phi3")
    record(out_dir, "spm_phi3", special)


if __name__ == "__main__":
    main()
