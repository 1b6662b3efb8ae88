#!/usr/bin/env python3
"""transformers' greedy decoding with the KV cache on the CPU, for `benches/cpu_compare.sh`: the model
directory's `generate(max_new_tokens=N, do_sample=False)` from a text prompt, fp32, timed without loading.
Prints one JSON line with the seconds and the new tokens (EOS ignored, so every run decodes N tokens).

Usage:  python3 benches/decode_torch.py --model .cache/smollm2-135m-instruct --prompt 'def fibonacci(n):'
"""
import argparse, json, time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="def fibonacci(n):")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    ids = tok(args.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        seconds = time.perf_counter() - t
    print(json.dumps({"impl": "transformers", "seconds": seconds, "new_tokens": out.shape[1] - ids.shape[1]}))


if __name__ == "__main__":
    main()
