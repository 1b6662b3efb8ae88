#!/usr/bin/env python3
"""PyTorch reference timing for a Llama forward pass on CPU (the baseline for benches/forward.rs).

Shape: vocab 8192, hidden 512, intermediate 1536, 8 layers, 8 heads, 4 KV heads,
rope_theta 10000, untied embeddings, batch 1, seq 256 (default), fp32, no grad.
Weights: random init after torch.manual_seed(0); ids: torch.manual_seed(0), uniform in [0, vocab).

Both attention implementations are timed: "eager" (explicit softmax(QK^T)V, what the goldens
use) and "sdpa" (torch.nn.functional.scaled_dot_product_attention, the fair comparison for an
optimised Rust kernel). 3 warm-ups, then --reps timed reps (default 10); one JSON line per impl:

    {"impl": "sdpa", "median_s": ..., "tokens_per_s": ..., "min_s": ..., ...}

Usage:  .venv/bin/python benches/forward_torch.py [--seq 256] [--threads 2] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        use_cache=False,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ids = torch.randint(0, 8192, (1, args.seq), dtype=torch.int64)
    for attn in ("eager", "sdpa"):
        model = build(attn)
        with torch.inference_mode():
            for _ in range(args.warmup):
                model(input_ids=ids, use_cache=False)
            times = []
            for _ in range(max(args.reps, 1)):
                t0 = time.perf_counter()
                model(input_ids=ids, use_cache=False)
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(json.dumps({
            "impl": attn,
            "median_s": round(med, 6),
            "tokens_per_s": round(args.seq / med, 1),
            "min_s": round(min(times), 6),
            "reps": len(times),
            "seq": args.seq,
            "threads": args.threads,
            "torch": torch.__version__.split("+")[0],
        }), flush=True)


if __name__ == "__main__":
    main()
