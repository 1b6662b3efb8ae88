#!/usr/bin/env python3
"""PyTorch reference timing for one full fine-tuning step on CPU (the baseline for benches/train_step.rs).

Same shape as the Rust bench: vocab 8192, hidden 384, intermediate 1024, 6 layers, 6 heads, 2 KV heads,
untied, fp32, batch 4 x seq 256, labels = input ids (mean CE over the shifted tokens), backward,
clip_grad_norm_(1.0), torch.optim.AdamW (foreach, the default). Attention: sdpa (the fair comparison).
Prints one JSON line: {"impl": ..., "median_s": ..., "tokens_per_s": ..., "min_s": ...}.

Usage:  .venv/bin/python benches/train_torch.py [--threads 2] [--reps 10]
"""
import argparse, json, statistics, time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--attn", default="sdpa")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=2048,
                      rope_theta=10000.0, tie_word_embeddings=False, attn_implementation=args.attn)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).train()
    ids = torch.randint(0, 8192, (4, 256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"impl": f"torch-{args.attn}", "params": n, "median_s": med, "min_s": min(times),
                      "tokens_per_s": 4 * 256 / med, "threads": args.threads}))


if __name__ == "__main__":
    main()
