#!/usr/bin/env python3
"""PyTorch on the GPU, the anchor for `mftcoder bench --device cuda` (the table in shared/reference/gpu.md).

Llama shapes with random init, bf16 weights, SDPA attention, fused AdamW, 3 warm-up + 10 timed steps of
`model(input_ids, labels)` → backward → clip_grad_norm_(1.0) → step; LoRA: PEFT r = 16, α = 32 on all seven
projections; QLoRA: that LoRA on bitsandbytes `Linear4bit` bases (NF4 + double quantization, bf16 compute),
without gradient checkpointing (as `mftcoder bench`). Prints one JSON line per run: tokens/s, median step, MFU (6·N·tokens/s ÷ 989.4 TFLOP/s), peak
memory. Runs on the device machine (PyTorch + transformers + peft are installed there).

Usage:  python3 benches/gpu_torch.py --model 134m --mode full
        python3 benches/gpu_torch.py --model 7b --mode qlora     (needs bitsandbytes)
"""
import argparse, json, statistics, time

import torch

SHAPES = {  # hidden, layers, heads, kv heads, mlp, batch, seq
    "134m": (768, 12, 12, 12, 2048, 16, 1024),
    "1.1b": (2048, 22, 32, 4, 5632, 8, 2048),
    "7b": (4096, 32, 32, 32, 11008, 1, 2048),  # Llama-2-7B
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def quantize_projections(model):
    """Swap every projection for a bitsandbytes Linear4bit (NF4, double quantization, bf16 compute); the bf16
    weight is quantized as it moves to the GPU and its full-precision copy is freed."""
    import bitsandbytes as bnb
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in PROJECTIONS and isinstance(child, torch.nn.Linear):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                      device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False,
                                             compress_statistics=True, quant_type="nf4").to("cuda")
                if child.bias is not None:
                    q.bias = child.bias
                setattr(module, name, q)
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="134m", choices=SHAPES)
    ap.add_argument("--mode", default="full", choices=["full", "lora", "qlora"])
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, mlp, batch, seq = SHAPES[args.model]
    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).train()
    n_params = sum(p.numel() for p in model.parameters())
    if args.mode == "qlora":
        quantize_projections(model)
    if args.mode in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    ids = torch.randint(0, 32000, (batch, seq), device="cuda")

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    tps = batch * seq / med
    print(json.dumps({"impl": "pytorch", "model": args.model, "mode": args.mode, "tokens_per_s": round(tps),
                      "step_ms": round(med * 1e3, 1), "mfu": round(6 * n_params * tps / 989.4e12, 4),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}))


if __name__ == "__main__":
    main()
