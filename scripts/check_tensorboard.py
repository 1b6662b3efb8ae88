#!/usr/bin/env python3
"""Read what `mftcoder train` and `mftcoder dpo` write into `tb_dir` with TensorBoard's own reader, and check that
every tag and value equals the run's metrics.jsonl.

    .venv/bin/pip install tensorboard
    cargo build --release
    .venv/bin/python scripts/check_tensorboard.py [--bin target/release/mftcoder]

It runs, on the tiny fixture model in a temporary directory: a LoRA + CoBa `train` of 4 steps (checkpoints at 2
and 4), the same run resumed from step 2 (as after a kill: `latest` rewound, so steps 3-4 are written again into a
second events file), and a `dpo` run. For each, TensorBoard's EventAccumulator (which drops, at a SessionLog
START, the earlier files' events from that step on) must give exactly the scalars that metrics.jsonl implies:
MFTCoder's tags for train, the Hugging Face Trainer's for dpo, values as f32. The mapping below is written from
the tag lists in the book, independently of the Rust code.
"""
import argparse
import json
import pathlib
import struct
import subprocess
import tempfile

from tensorboard.backend.event_processing import event_accumulator

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "fixtures/llama/gqa_tied"


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected_mft(lines, coba):
    """tag -> [(step, value)] for MFTCoder's trainer."""
    want = {}

    def add(tag, step, v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            want.setdefault(tag, []).append((step, f32(v)))

    for line in lines:
        step = line["step"]
        if "lr" in line:  # a training step
            for field, tag in [("loss", "Loss/train"), ("lr", "LearningRate/train"), ("grad_norm", "GradNorm/train"),
                               ("aux_loss", "AuxLoss/train"), ("tokens_per_s", "TokensPerSecond/train"),
                               ("epoch", "Epochs")]:
                add(tag, step, line.get(field))
            for task, v in line["task_loss"].items():
                add(f"{task}_loss/train", step, v)
            if coba:
                total = sum(line["task_weights"].values())
                for task, w in line["task_weights"].items():
                    add(f"{task}_coba_weight/train", step, w / total)
        else:  # an evaluation
            add("Loss/valid", step, line["eval_loss"])
            add("Perplexity/valid", step, line["perplexity"])
            for task, v in line["eval_task_loss"].items():
                add(f"{task}_loss/valid", step, v)
    return want


def expected_trainer(lines):
    """tag -> [(step, value)] for the HF Trainer's names: eval_x -> eval/x, lr -> train/learning_rate, else train/x."""
    want = {}
    for line in lines:
        for key, v in line.items():
            if key in ("step", "elapsed_s") or not isinstance(v, (int, float)):
                continue
            tag = "train/learning_rate" if key == "lr" else (
                "eval/" + key[5:] if key.startswith("eval_") else "train/" + key)
            want.setdefault(tag, []).append((line["step"], f32(v)))
    return want


def read_back(tb_dir):
    acc = event_accumulator.EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def compare(name, got, want):
    assert set(got) == set(want), f"{name}: tags differ: only in events {set(got) - set(want)}, " \
                                  f"only in metrics {set(want) - set(got)}"
    for tag in want:
        g, w = sorted(got[tag]), sorted(want[tag])
        assert g == w, f"{name}: {tag}: events {g} != metrics {w}"
    n = sum(map(len, want.values()))
    print(f"{name}: {len(want)} tags, {n} scalars: TensorBoard's reader gives exactly metrics.jsonl")
    return n


def metrics(out_dir):
    return [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def run(binary, *args):
    done = subprocess.run([binary, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/mftcoder"))
    binary = ap.parse_args().bin
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        paths = []
        for task, n in [("add", 24), ("reverse", 16)]:
            d = tmp / task
            d.mkdir()
            rows = [{"prompt": f"{i} + 3" if task == "add" else f"rev {i}x",
                     "answer": str(i + 3) if task == "add" else f"x{i}"} for i in range(n)]
            (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            paths.append(str(d))
        out, tb = tmp / "out", tmp / "tb"
        cfg = {"data_paths": paths, "output_dir": str(out), "tb_dir": str(tb), "pretrained_model_path": str(MODEL),
               "peft_type": "lora", "lora_rank": 4, "weighted_loss_mode": "coba", "coba_warmup_steps": 1,
               "coba_history_length": 2, "seq_length": 32, "per_device_train_batch_size": 4,
               "per_device_eval_batch_size": 4, "learning_rate": 1e-3, "num_train_epochs": 1, "max_train_steps": 4,
               "data_split": "75,25,0", "checkpointing_steps": 2, "evaluation_steps": 2, "num_warmup_steps": 1,
               "early_stopping": False}
        (tmp / "train.json").write_text(json.dumps(cfg))
        run(binary, "train", "--config", str(tmp / "train.json"), "--quiet")
        total = compare("train", read_back(tb), expected_mft(metrics(out), coba=True))
        # as after a kill at step 3: latest rewound to step_2, so the resumed run rewrites steps 3 and 4
        (out / "latest").write_text(json.dumps({"latest_ckpt": str(out / "step_2"), "lr": 0.0}))
        run(binary, "train", "--config", str(tmp / "train.json"), "--quiet")
        files = sorted(p.name for p in tb.iterdir())
        assert len(files) == 2, files
        total += compare("train resumed at step 3", read_back(tb), expected_mft(metrics(out), coba=True))

        pairs = []
        for i in range(40):
            q = {"role": "human", "content": f"add {i} and 2"}
            pairs.append({"chosen": [q, {"role": "bot", "content": str(i + 2)}],
                          "rejected": [q, {"role": "bot", "content": str(i + 3)}]})
        (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        dpo_out, dpo_tb = tmp / "dpo", tmp / "dpo_tb"
        dpo_cfg = {"data_paths": [str(tmp / "pairs.jsonl")], "output_dir": str(dpo_out), "tb_dir": str(dpo_tb),
                   "pretrained_model_path": str(MODEL), "peft_type": "lora", "lora_rank": 4, "data_split": "90,10",
                   "per_device_train_batch_size": 9, "num_train_epochs": 1, "max_prompt_length": 16,
                   "max_length": 32, "eval_steps": 2, "logging_steps": 1}
        (tmp / "dpo.json").write_text(json.dumps(dpo_cfg))
        run(binary, "dpo", "--config", str(tmp / "dpo.json"), "--quiet")
        total += compare("dpo", read_back(dpo_tb), expected_trainer(metrics(dpo_out)))
        print(f"OK: {total} scalars checked")


if __name__ == "__main__":
    main()
