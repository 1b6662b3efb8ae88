#!/usr/bin/env python3
"""Write three small code tasks in MFTCoder's chat_rounds jsonl schema.

    python3 book/examples/own-data/make_tasks.py

writes book/examples/own-data/data/{docstring,py2rust,unit_test}/train.jsonl, 36 records each.
One directory per task: MFTCoder names each task after the last component of its data path.
Standard library only; the output is the same on every run.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, python body, rust body, docstring, test input, expected) for a family of one-line functions
def functions():
    out = []
    for n in range(2, 14):
        out.append((f"add_{n}", f"return x + {n}", f"x + {n}", f"Return x plus {n}.", 5, 5 + n))
        out.append((f"times_{n}", f"return x * {n}", f"x * {n}", f"Return x multiplied by {n}.", 3, 3 * n))
        out.append((f"is_multiple_of_{n}", f"return x % {n} == 0", f"x % {n} == 0",
                    f"Return True if x is divisible by {n}.", 2 * n, True))
    return out  # 36 functions


def python_src(name, body):
    return f"def {name}(x):\n    {body}"


def rust_src(name, body):
    ret = "bool" if "==" in body else "i64"
    return f"fn {name}(x: i64) -> {ret} {{\n    {body}\n}}"


def check(name, arg, expected):
    return f"{name}({arg})" if expected is True else f"{name}({arg}) == {expected}"


def record(rounds):
    return {"chat_rounds": rounds}


def main():
    # ANCHOR: records
    tasks = {"docstring": [], "py2rust": [], "unit_test": []}
    for name, py, rs, doc, arg, expected in functions():
        src = python_src(name, py)
        tasks["docstring"].append(record([
            {"role": "human", "content": f"Write a one-line docstring for this function:\n{src}"},
            {"role": "bot", "content": f'"""{doc}"""'},
        ]))
        tasks["py2rust"].append(record([
            {"role": "system", "content": "You translate Python to Rust."},
            {"role": "human", "content": f"Translate to Rust:\n{src}"},
            {"role": "bot", "content": rust_src(name, rs)},
        ]))
        tasks["unit_test"].append(record([
            {"role": "human", "content": f"Write a pytest test for this function:\n{src}"},
            {"role": "bot", "content": f"def test_{name}():\n    assert {check(name, arg, expected)}"},
        ]))
    # ANCHOR_END: records
    for task, records in tasks.items():
        d = os.path.join(HERE, "data", task)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "train.jsonl"), "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        print(f"{task}: {len(records)} records")


if __name__ == "__main__":
    main()
