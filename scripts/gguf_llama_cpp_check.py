#!/usr/bin/env python3
"""Run GGUF files that `mftcoder export` wrote in llama.cpp itself (llama-cpp-python) and compare with mftcoder
on the same file: the logits of a prompt (every position, `logits_all=True`) and the greedy continuation.

    .venv/bin/pip install llama-cpp-python            # builds llama.cpp from source (long on 2 cores)
    cargo build --release
    .venv/bin/python scripts/gguf_llama_cpp_check.py --model .cache/smollm2-135m-instruct [--new-tokens 40]

For each of f16, q8_0 and q4_k it exports --model to a temporary GGUF, then asks both programs:
  - token ids of the prompt: llama.cpp's tokenizer vs mftcoder's (`forward --text`), which must be equal;
  - logits: llama.cpp's `Llama.eval` scores vs `mftcoder forward --model FILE.gguf` (mftcoder reads the
    exported file back, so both run the same quantized weights); max |Δ| is printed;
  - greedy: llama.cpp's argmax loop vs `mftcoder generate --model FILE.gguf --json`, token for token.
With --check, exits non-zero unless the f32 and f16-as-f32 logits agree within --tolerance (1e-3) and f16's
prompt ids and greedy continuation are identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "<|im_start|>user\nWrite a Python function that returns the sum of a list.<|im_end|>\n<|im_start|>assistant\n"


def mftcoder(binary: Path, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([str(binary), *args], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"mftcoder {' '.join(args)} failed:\n{run.stderr}")
    return run


def ours_logits(binary: Path, gguf: Path, ids: list[int], tmp: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    out = tmp / f"{gguf.stem}.logits.safetensors"
    mftcoder(binary, "forward", "--model", str(gguf), "--ids", ",".join(map(str, ids)), "--out", str(out))
    return load_file(out)["logits"]


def without_extra_buffer_types() -> None:
    """llama.cpp's CPU "extra buffer types" (weights repacked for AMX / AVX-512 kernels) crash this build on a
    Sapphire Rapids CPU at the first Q8_0 matmul, llama.cpp's own Q8_0 files included; the plain kernels are
    used instead (`use_extra_bufts = False`, llama-cli's `--no-repack`)."""
    import llama_cpp.llama as L

    default = L.llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    L.llama_cpp.llama_model_default_params = params


def llama_cpp(gguf: Path, ids: list[int], new_tokens: int, eos: int | None):
    from llama_cpp import GGML_TYPE_F32, Llama

    # f32 KV cache: llama.cpp's default f16 cache would round keys and values
    llm = Llama(str(gguf), logits_all=True, n_ctx=max(512, len(ids) + new_tokens + 8), n_threads=2, verbose=False,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    greedy = []
    for _ in range(new_tokens):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(nxt)
        if nxt == eos:
            break
        llm.eval([nxt])
    return llm, logits, greedy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model directory to export")
    ap.add_argument("--mftcoder", type=Path, default=ROOT / "target/release/mftcoder")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--quants", default="f32,f16,f16-as-f32,q8_0,q4_k")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    without_extra_buffer_types()
    ok = True
    reference = None  # our logits on the f32 export
    with tempfile.TemporaryDirectory(prefix="mftcoder-llama-cpp-") as tmp:
        tmp = Path(tmp)
        for quant in args.quants.split(","):
            gguf = tmp / f"model-{quant}.gguf"
            if quant == "f16-as-f32":
                # the f16 file's weights, widened to f32: llama.cpp then multiplies in f32, not f16
                src = tmp / "model-f16.gguf"
                mftcoder(args.mftcoder, "export", "--model", str(src), "--gguf", "--quant", "f32", str(gguf))
            else:
                mftcoder(args.mftcoder, "export", "--model", str(args.model), "--gguf", "--quant", quant, str(gguf))
            ids_file = tmp / "ids.safetensors"
            mftcoder(args.mftcoder, "forward", "--model", str(gguf), "--text", args.prompt, "--out", str(ids_file))
            from safetensors.numpy import load_file

            ours_ids = load_file(ids_file)["input_ids"].tolist()
            from llama_cpp import Llama

            vocab = Llama(str(gguf), vocab_only=True, verbose=False)
            theirs_ids = vocab.tokenize(args.prompt.encode(), add_bos=vocab.metadata.get("tokenizer.ggml.add_bos_token") == "true", special=True)
            eos = vocab.token_eos()
            del vocab
            llm, theirs, greedy = llama_cpp(gguf, ours_ids, args.new_tokens, eos)
            ours = ours_logits(args.mftcoder, gguf, ours_ids, tmp)
            diff = float(np.abs(ours - theirs).max())
            reference = reference if quant != "f32" else ours
            quant_err = "" if reference is None else f"  (ours vs ours f32: {float(np.abs(ours - reference).max()):.3e})"
            run = mftcoder(args.mftcoder, "generate", "--model", str(gguf), "--ids", ",".join(map(str, ours_ids)),
                           "--max-new-tokens", str(args.new_tokens), "--json")
            ours_greedy = json.loads(run.stdout)["generated_ids"]
            same = ours_greedy == greedy
            first = next((i for i, (a, b) in enumerate(zip(ours_greedy, greedy)) if a != b), None)
            print(f"{quant:5s} {gguf.stat().st_size / 1e6:7.1f} MB  prompt ids equal: {ours_ids == theirs_ids}  "
                  f"T={len(ours_ids)}  max|Δlogits| = {diff:.3e} (max |logit| {np.abs(theirs).max():.1f})  "
                  f"greedy {len(greedy)} tokens identical: {same}" + ("" if same else f" (first difference at {first})")
                  + quant_err)
            print(f"      llama.cpp: {llm.detokenize(greedy).decode(errors='replace')!r}")
            del llm
            if quant in ("f32", "f16-as-f32"):
                ok &= diff <= args.tolerance
            if quant == "f16":
                ok &= same and ours_ids == theirs_ids
    if args.check and not ok:
        print("FAILED: f16 logits beyond tolerance, prompt ids or greedy continuation differ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
