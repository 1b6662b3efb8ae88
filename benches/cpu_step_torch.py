#!/usr/bin/env python3
"""PyTorch (+ PEFT, + bitsandbytes) on the CPU: the training step `mftcoder bench --model 134m` times, for
`benches/cpu_compare.sh`.

The 134m Llama shape (hidden 768, 12 layers, 12 heads, MLP 2048, vocab 32000, untied), random init, fp32,
SDPA attention, AdamW (lr 1e-4, weight decay 0.01), `clip_grad_norm_(1.0)`; LoRA: PEFT r = 16, alpha = 32 on
the seven projections; QLoRA: the same LoRA on a base loaded through bitsandbytes in NF4 with double
quantization (compute dtype f32). Prints one JSON line: the median step, resident memory (max RSS).

Usage:  python3 benches/cpu_step_torch.py --mode lora --batch 1 --seq 512
"""
import argparse, json, resource, statistics, tempfile, time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(mode: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    if mode == "qlora":
        from transformers import BitsAndBytesConfig
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32)
            model = LlamaForCausalLM.from_pretrained(tmp, quantization_config=q, device_map="cpu",
                                                     torch_dtype=torch.float32, attn_implementation="sdpa")
    if mode in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    return model.train()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="full", choices=["full", "lora", "qlora"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.mode)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, 32000, (args.batch, args.seq))
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(json.dumps({"impl": "pytorch", "mode": args.mode, "median_s": statistics.median(times),
                      "rss_gb": round(rss_gb, 2)}))


if __name__ == "__main__":
    main()
