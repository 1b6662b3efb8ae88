"""The products of benches/products.rs through PyTorch (MKL on the CPU): the same shapes and the same
transposed operands (a transposed operand is a `.t()` view of the array stored the other way). One JSON line
per product: the median's GFLOP/s."""
import argparse, json, time

import torch

PRODUCTS = [
    ("base x·Wᵀ 768→768", 512, 768, 768, False, False),
    ("base x·Wᵀ 768→2048", 512, 768, 2048, False, False),
    ("stacked q/k/v x·Wᵀ 768→2304", 512, 768, 2304, False, False),
    ("stacked gate/up x·Wᵀ 768→4096", 512, 768, 4096, False, False),
    ("base dx = dy·W 768→768", 512, 768, 768, False, True),
    ("stacked q/k/v dx = dy·W 2304→768", 512, 2304, 768, False, True),
    ("stacked gate/up dx = dy·W 4096→768", 512, 4096, 768, False, True),
    ("base dx = dy·W 2048→768", 512, 2048, 768, False, True),
    ("head x·Wᵀ 768→32000", 512, 768, 32000, False, False),
    ("head dh = dlogits·W", 512, 32000, 768, False, True),
    ("lora r16 x·Aᵀ", 512, 768, 16, False, False),
    ("lora r16 h·Bᵀ", 512, 16, 2048, False, False),
    ("lora r16 dB = (hᵀ·dy)ᵀ", 16, 512, 2048, True, False),
    ("lora r16 dh = dy·B", 512, 2048, 16, False, True),
    ("lora r16 dA = (xᵀ·dh)ᵀ", 768, 512, 16, True, False),
    ("lora r16 dx += dh·A", 512, 16, 768, False, True),
    ("lora r64 x·Aᵀ", 512, 768, 64, False, False),
    ("lora r64 dA = (xᵀ·dh)ᵀ", 768, 512, 64, True, False),
    ("lora r64 dh = dy·B", 512, 2048, 64, False, True),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, m, k, n, trans_a, trans_b in PRODUCTS:
        a = torch.rand(k, m).t() if trans_a else torch.rand(m, k)
        b = torch.rand(n, k).t() if trans_b else torch.rand(k, n)
        flops = 2.0 * m * k * n
        reps = max(9, min(201, int(2e10 / flops)))
        for _ in range(3):
            a @ b
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        times.sort()
        print(json.dumps({"name": name, "gflops": round(flops / times[reps // 2] / 1e9, 1)}))


if __name__ == "__main__":
    main()
