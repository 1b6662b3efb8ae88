#!/usr/bin/env python3
"""Write preference pairs for `mftcoder dpo`: a correct one-line function (chosen) against a buggy one
(rejected), in MFTCoder's {"chosen": [...], "rejected": [...]} jsonl schema.

    python3 book/examples/preference/make_pairs.py

writes book/examples/preference/data/pairs.jsonl, 48 pairs. Standard library only; the same on every run.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def pairs():
    out = []
    for n in range(2, 10):
        # (request, correct body, buggy body): the bug is the kind a small model makes
        out.append((f"Write a Python function add_{n}(x) that returns x plus {n}.",
                    f"def add_{n}(x):\n    return x + {n}", f"def add_{n}(x):\n    return x - {n}"))
        out.append((f"Write a Python function times_{n}(x) that returns x multiplied by {n}.",
                    f"def times_{n}(x):\n    return x * {n}", f"def times_{n}(x):\n    return x ** {n}"))
        out.append((f"Write a Python function is_multiple_of_{n}(x) that says whether x is divisible by {n}.",
                    f"def is_multiple_of_{n}(x):\n    return x % {n} == 0",
                    f"def is_multiple_of_{n}(x):\n    return x / {n} == 0"))
        out.append((f"Write a Python function first_{n}(items) that returns the first {n} items of a list.",
                    f"def first_{n}(items):\n    return items[:{n}]", f"def first_{n}(items):\n    return items[{n}:]"))
        out.append((f"Write a Python function clamp_{n}(x) that limits x to at most {n}.",
                    f"def clamp_{n}(x):\n    return min(x, {n})", f"def clamp_{n}(x):\n    return max(x, {n})"))
        out.append((f"Write a Python function last_{n}(s) that returns the last {n} characters of a string.",
                    f"def last_{n}(s):\n    return s[-{n}:]", f"def last_{n}(s):\n    return s[:-{n}]"))
    return out  # 48 pairs


def main():
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    with open(os.path.join(HERE, "data", "pairs.jsonl"), "w") as f:
        for request, good, bad in pairs():
            turn = {"role": "human", "content": request}
            record = {"chosen": [turn, {"role": "bot", "content": good}],
                      "rejected": [turn, {"role": "bot", "content": bad}]}
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
