"""Coding: say what a small Python program prints, for several program shapes and ways of asking.

Programs are built from templates with random numbers, names and words, and their output is computed here
alongside (the tests run every shape to check it). Shapes: an expression, variables, a function call, a
``for`` loop, an ``if``/``else`` and string operations (training); a ``while`` loop and list operations (held
out). Wordings: four for training (code in a fenced block or plain, question before or after), two held out.
Every program prints one line; the eval metric is ``exact`` (SQuAD-normalised).
"""

from __future__ import annotations

import random

from lora_merge.skilldata.generated import Generator, Item
from lora_merge.skilldata.model import Source

NAMES = ("x", "n", "total", "count", "value", "a", "b", "k", "score", "result")
WORDS = ("cat", "river", "lamp", "orbit", "pixel", "maple", "tiger", "cloud", "stone", "violet", "ember", "quill")
Program = tuple[str, str]  # (code, printed output)


def _two(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    return a, b


def expr(rng: random.Random) -> Program:
    a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 9)
    forms = ((f"{a} + {b} * {c}", a + b * c), (f"({a} + {b}) * {c}", (a + b) * c),
             (f"{a} * {c} - {b}", a * c - b), (f"{a} - {b} + {c}", a - b + c), (f"{a * c} // {c} + {b}", a + b))
    text, value = rng.choice(forms)
    return f"print({text})", str(value)


def variables(rng: random.Random) -> Program:
    p, q = _two(rng)
    a, b, k = rng.randint(1, 30), rng.randint(1, 30), rng.randint(2, 5)
    if rng.random() < 0.5:
        return f"{p} = {a}\n{q} = {b}\n{p} = {p} + {q}\nprint({p} * {k})", str((a + b) * k)
    return f"{p} = {a}\n{q} = {p} - {b}\nprint({q} + {k})", str(a - b + k)


def func(rng: random.Random) -> Program:
    name = rng.choice(("f", "double_plus", "scale", "step", "g"))
    arg, k, c = rng.randint(1, 15), rng.randint(2, 6), rng.randint(0, 9)
    if rng.random() < 0.5:
        return f"def {name}(v):\n    return v * {k} + {c}\n\nprint({name}({arg}))", str(arg * k + c)
    b = rng.randint(1, 15)
    return f"def {name}(u, w):\n    return u - w * {k}\n\nprint({name}({arg}, {b}))", str(arg - b * k)


def for_loop(rng: random.Random) -> Program:
    p = rng.choice(("total", "acc", "s", "count"))
    lo, hi, k = rng.randint(0, 4), rng.randint(5, 12), rng.randint(1, 3)
    if rng.random() < 0.5:
        return (f"{p} = 0\nfor i in range({lo}, {hi}):\n    {p} += i * {k}\nprint({p})",
                str(sum(i * k for i in range(lo, hi))))
    return (f"{p} = 0\nfor i in range({hi}):\n    if i % 2 == 0:\n        {p} += 1\nprint({p})",
            str(sum(1 for i in range(hi) if i % 2 == 0)))


def if_else(rng: random.Random) -> Program:
    p = rng.choice(NAMES)
    a, t = rng.randint(0, 40), rng.randint(5, 35)
    yes, no = rng.sample(WORDS, 2)
    return (f"{p} = {a}\nif {p} > {t}:\n    print(\"{yes}\")\nelse:\n    print(\"{no}\")", yes if a > t else no)


def string_ops(rng: random.Random) -> Program:
    w, v = rng.sample(WORDS, 2)
    k = rng.randint(2, 4)
    forms = ((f"s = \"{w}\"\nprint(s[1:4])", w[1:4]), (f"s = \"{w}\"\nprint(s[::-1])", w[::-1]),
             (f"s = \"{w}\"\nprint(len(s) * {k})", str(len(w) * k)),
             (f"s = \"{w}\"\nt = \"{v}\"\nprint(s + \"-\" + t)", f"{w}-{v}"))
    return rng.choice(forms)


def while_loop(rng: random.Random) -> Program:
    p = rng.choice(("n", "m", "value"))
    a = rng.randint(2, 200)
    if rng.random() < 0.5:
        steps, n = 0, a
        while n > 1:
            n //= 2
            steps += 1
        return f"{p} = {a}\nsteps = 0\nwhile {p} > 1:\n    {p} = {p} // 2\n    steps += 1\nprint(steps)", str(steps)
    limit, n = rng.randint(20, 500), rng.randint(1, 5)
    start = n
    while n < limit:
        n *= 2
    return f"{p} = {start}\nwhile {p} < {limit}:\n    {p} = {p} * 2\nprint({p})", str(n)


def list_ops(rng: random.Random) -> Program:
    xs = [rng.randint(0, 20) for _ in range(rng.randint(3, 6))]
    i, j = rng.randrange(len(xs)), rng.randrange(len(xs))
    forms = (("print(sum(xs))", sum(xs)), ("print(max(xs) - min(xs))", max(xs) - min(xs)),
             (f"print(xs[{i}] + xs[{j}])", xs[i] + xs[j]), ("xs.append(7)\nprint(len(xs))", len(xs) + 1))
    text, value = rng.choice(forms)
    return f"xs = {xs}\n{text}", str(value)


LAYOUTS = {"expr": expr, "variables": variables, "func": func, "for_loop": for_loop, "if_else": if_else,
           "string_ops": string_ops}
HELD_OUT_LAYOUTS = {"while_loop": while_loop, "list_ops": list_ops}
WORDINGS = {
    "what_prints": "What does this program print?\n\n```python\n{code}\n```",
    "output_of": "What is the output of the following Python code?\n\n{code}",
    "code_first": "```python\n{code}\n```\n\nWhat gets printed when this runs?",
    "predict": "Predict the output of this Python snippet:\n{code}",
}
HELD_OUT_WORDINGS = {
    "screen": "If I run the script below, what will appear on the screen?\n\n```\n{code}\n```",
    "output_slot": "Code:\n{code}\nOutput:",
}
FORMATS = ("", "\nReply with the printed output only.")


def draw(rng: random.Random, layout: str, wording: str) -> Item:
    code, out = {**LAYOUTS, **HELD_OUT_LAYOUTS}[layout](rng)
    prompt = {**WORDINGS, **HELD_OUT_WORDINGS}[wording].format(code=code) + rng.choice(FORMATS)
    return Item(prompt, out, (out,))


CODING = Generator("coding", tuple(LAYOUTS), tuple(HELD_OUT_LAYOUTS), tuple(WORDINGS), tuple(HELD_OUT_WORDINGS),
                   draw, Source("lora_merge coding generator", "Apache-2.0 (this project)",
                                "lora_merge/skilldata/coding.py", "procedural Python programs from templates"))
