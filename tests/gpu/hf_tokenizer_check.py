#!/usr/bin/env python3
"""Checks the tokenizer files `kvtier-model init` writes against Hugging Face transformers.

For the Llama-3 and ChatML formats: AutoTokenizer loads tokenizer.json + tokenizer_config.json,
its vocabulary has config.vocab_size entries, `encode(text, add_special_tokens=False)` equals
`kvtier-model tokenize --text` on a set of texts (ASCII, whitespace runs, digits, multi-byte
UTF-8, special tokens), and `apply_chat_template(..., add_generation_prompt=True)` renders the
text kvtier renders, with the same ids. Prints one line per check and a JSON summary; exits 1 on
any mismatch.
"""
import argparse
import json
import os
import subprocess
import sys

from transformers import AutoTokenizer

TEXTS = [
    "Hello world's 12345 test\n\n",
    "The cat sat on the mat.  Then   it slept!",
    "Zahlen: 3.14159, 2718281828; über naïve café — 東京 🙂",
    "  leading and trailing spaces  ",
    "line one\nline two\r\n\ttabbed",
    "<|begin_of_text|>special<|eot_id|> <|im_start|>user\nhi<|im_end|>",
]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a KV cache?"},
    {"role": "assistant", "content": "Saved attention keys and values."},
    {"role": "user", "content": "Why reuse it?"},
]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise RuntimeError(f"failed: {' '.join(cmd)}")
    return r.stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True, help="path to kvtier-model")
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    rows = []
    for shape, fmt in [("tiny", "llama3"), ("tiny-qwen2", "chatml")]:
        d = os.path.join(args.workdir, f"tok-{shape}")
        run([args.bin, "init", "--shape", shape, "--dtype", "bf16", "--out", d])
        tok = AutoTokenizer.from_pretrained(d)
        vocab = json.load(open(os.path.join(d, "config.json")))["vocab_size"]
        ok_vocab = len(tok) == vocab
        bad = []
        for t in TEXTS:
            ours = json.loads(run([args.bin, "tokenize", "--model", d, "--text", t, "--json"]))
            theirs = tok.encode(t, add_special_tokens=False)
            if ours["ids"] != theirs:
                bad.append(dict(text=t, kvtier=ours["ids"], hf=theirs))
        ours = json.loads(run([args.bin, "tokenize", "--model", d, "--chat-json", json.dumps(CHAT),
                               "--json"]))
        text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        chat_ok = ours["text"] == text and ours["ids"] == ids
        ok = ok_vocab and not bad and chat_ok
        rows.append(dict(shape=shape, format=fmt, vocab_ok=ok_vocab, hf_len=len(tok),
                         encode_mismatches=bad, chat_ok=chat_ok,
                         chat_kvtier=ours["text"] if not chat_ok else None,
                         chat_hf=text if not chat_ok else None, ok=ok))
        print(f"{shape:11s} {fmt:7s} vocab {len(tok)}/{vocab} encode {len(TEXTS) - len(bad)}/"
              f"{len(TEXTS)} chat template {'same' if chat_ok else 'DIFFERENT'} "
              f"{'OK' if ok else 'FAIL'}", flush=True)
    print(json.dumps(dict(checks=rows, ok=all(r["ok"] for r in rows)), ensure_ascii=False))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
