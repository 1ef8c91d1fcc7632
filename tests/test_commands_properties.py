"""Property tests: random settings files and data rows through the command line and the loaders end in exit 0 or 2.

Merge recipes (`fold --config`), training recipes (`train --config`, `--set`), the study's, map's and miniature
world's configs, and JSONL rows (`data validate`, the training and eval loaders) are drawn as random YAML / JSON
structures: known keys with values of any type, 2⁶³-sized and 5,000-digit numbers, nesting 20,000 deep, alias
bombs, odd unicode (line and paragraph separators, NEL, control and bidi characters), bytes that are not UTF-8.
Whatever is drawn, a command exits 0 or 2 with no traceback, and a loader returns or raises LoraMergeError (issue
35). The commands are ones that stop before a model is loaded (no general model or base exists, or a pack does not
resolve), so each example costs milliseconds; `max_examples` keeps the file to a few seconds in `make test`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import tempfile
import typing
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
SCRATCH = Path(tempfile.mkdtemp(prefix="lora_merge_cmd_props-"))  # the commands run here: a relative `out:` lands here

ODD = ["\u2028", "\u2029", "\u0085", "\x1b[31m", "\r", "\x00", "\u202e", "\ufeff", "\x7f", "é", "雪", "🙂", "|"]
scalars = (st.none() | st.booleans() | st.integers() | st.integers(2**63 - 2, 2**80) | st.integers(-2**80, -2**63)
           | st.floats() | st.text(max_size=20) | st.sampled_from(ODD) | st.sampled_from(["", ".", "-1"]))  # never ".." or "/": a bug must not reach them
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10) | st.sampled_from(["general", "pack", "weight"]), inner,
                                        max_size=4), max_leaves=12)

# Whole-file damage, applied to the YAML or JSON text drawn (bytes out).
DAMAGE = {
    "none": lambda text: text.encode("utf-8", "surrogatepass"),
    "5,000 digits": lambda text: (text + "\nseed: " + "9" * 5000 + "\n").encode(),
    "deep list": lambda text: ("seed: " + "[" * 20_000 + "]" * 20_000 + "\n" + text).encode(),
    "deep mapping": lambda text: ("seed: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n").encode(),
    "alias bomb": lambda text: ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))).encode(),
    "not UTF-8": lambda text: b"\xff\xfe" + text.encode("utf-8", "surrogatepass"),
    "UTF-16": lambda text: text.encode("utf-16", "surrogatepass"),
    "cut short": lambda text: text.encode("utf-8", "surrogatepass")[: len(text) // 2],
}


def keyed(model: typing.Any, depth: int = 0, plausible: dict[str, st.SearchStrategy] | None = None):
    """Mappings with a model's own keys (and its sections' keys, one level down), values of any type."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        fields = {k: f.annotation for k, f in model.model_fields.items()}
    elif dataclasses.is_dataclass(model):
        fields = {f.name: f.type for f in dataclasses.fields(model)}
    else:
        return values
    hints = plausible or {}
    optional = {}
    for key, tp in fields.items():
        strategy = values | hints[key] if key in hints else values
        if depth < 1 and _section(tp):
            strategy = strategy | keyed(tp, depth + 1)
        optional[key] = strategy
    return st.fixed_dictionaries({}, optional=optional) | st.dictionaries(st.sampled_from(list(fields)), values)


def near(valid: dict, model: typing.Any, plausible: dict[str, st.SearchStrategy]):
    """A valid mapping with up to two keys changed (to a plausible value or any value), or one key dropped: most
    such files get past validation, to the checks behind it."""
    keys = st.sampled_from(sorted(set(valid) | set(plausible) | set(model.model_fields)))
    changes = st.dictionaries(keys, st.one_of(*plausible.values()) | values, max_size=2)
    return st.tuples(changes, st.sampled_from([None, *valid])).map(
        lambda cd: {k: v for k, v in {**valid, **cd[0]}.items() if k != cd[1]})


def _section(tp: typing.Any) -> bool:
    """Whether a field's type is a section of its own (a pydantic model or a dataclass), not list[str] and the like."""
    return isinstance(tp, type) and typing.get_origin(tp) is None and (
        dataclasses.is_dataclass(tp) or issubclass(tp, BaseModel))


def document(mapping: st.SearchStrategy) -> st.SearchStrategy:
    """A settings file: the mapping as YAML (or something that is not a mapping), then some damage to the text."""
    text = (mapping | values).map(lambda v: yaml.safe_dump(v, allow_unicode=True, sort_keys=False))
    damage = st.just("none") | st.just("none") | st.sampled_from(sorted(DAMAGE))  # most files left whole
    return st.tuples(text, damage).map(lambda td: DAMAGE[td[1]](td[0]))


def invoke(args: list[str]):
    with contextlib.chdir(SCRATCH):
        return CliRunner().invoke(main, args)


def exits_0_or_2(res) -> None:
    assert res.exit_code in (0, 2), (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


def write(name: str, data: bytes) -> Path:
    path = SCRATCH / name
    path.write_bytes(data)
    return path


@functools.cache
def pico_world() -> None:
    """θpre, θG and adapters/skill in the scratch folder, so that some recipes fold (exit 0) or fail late."""
    from lora_merge.pico import make_lora_pack, perturbed, pico_model, save_model

    pre = pico_model("llama", hidden=32)
    save_model(pre, SCRATCH / "pre")
    save_model(perturbed(pre, seed=1), SCRATCH / "general")
    make_lora_pack(pre, SCRATCH / "pre", SCRATCH / "adapters" / "skill", "skill", seed=2, instances=100)


def _merge_recipe():
    from lora_merge.fold.merge_recipe import MergeRecipe

    adapters = st.lists(st.fixed_dictionaries({"pack": st.sampled_from(["skill", "../x", "nope"]) | values},
                                              optional={"weight": st.floats(-1, 2) | values, "sha256": values}),
                        max_size=3)
    plausible = {"general": st.sampled_from(["nope", "org/none", "", "general"]), "adapters": adapters,
                 "adapters_dir": st.just("adapters"), "base": st.just("pre"), "out": st.sampled_from(["out", "."]),
                 "method": st.sampled_from(["linear", "ties", "dare_linear", "wise_ft", "nope"]),
                 "density": st.floats(-1, 2), "rule": st.sampled_from(["auto", "size"])}
    valid = {"general": "general", "adapters_dir": "adapters", "adapters": [{"pack": "skill", "weight": 0.5}],
             "out": "out"}
    return keyed(MergeRecipe, plausible=plausible) | near(valid, MergeRecipe, plausible)


@SETTINGS
@given(document(_merge_recipe()), st.booleans())
def test_merge_recipes_through_fold_exit_0_or_2(data, force):
    pico_world()
    path = write("merge.yml", data)
    exits_0_or_2(invoke(["fold", "--config", str(path), *(["--force"] if force else [])]))


def _training_recipe():
    from lora_merge.train.training_recipe import TrainingRecipe

    rows = st.lists(st.fixed_dictionaries({}, optional={"prompt": values, "completion": values, "messages": values}),
                    max_size=3)
    plausible = {"base": st.just("nope"), "data": rows, "extends": st.sampled_from(["train.yml", ".", "merge.yml"]),
                 "out": st.sampled_from(["out", "."]), "strategy": st.sampled_from(["ptm", "cft", "rt", "nope"]),
                 "mode": st.sampled_from(["lora", "qlora", "full"]), "name": st.sampled_from(["t", "../x", ".h"])}
    valid = {"name": "t", "data": [{"prompt": "a", "completion": "b"}], "out": "out", "max_steps": 1}
    return keyed(TrainingRecipe, plausible=plausible) | near(valid, TrainingRecipe, plausible)


@SETTINGS
@given(document(_training_recipe()), st.just([]) | st.lists(st.tuples(
    st.sampled_from(["seed", "lr", "data", "freeze", "out", "target_modules", "name"]),
    st.text(max_size=12) | st.sampled_from(["9" * 5000, "[" * 5000, "&a [*a]", "0.1", "[q_proj]"])), max_size=2))
def test_training_recipes_through_train_exit_0_or_2(data, sets):
    path = write("train.yml", data)
    args = ["train", "--config", str(path), "--base", str(SCRATCH / "no-base")]  # stops before any model is loaded
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    exits_0_or_2(invoke(args))


def _configs():
    from lora_merge.miniature.config import DemoConfig, load_config
    from lora_merge.study.config import StudyConfig, load_study_config
    from lora_merge.study.map_config import MapConfig, load_map_config

    return [(load_config, DemoConfig), (load_study_config, StudyConfig), (load_map_config, MapConfig)]


@SETTINGS
@given(st.data())
def test_study_map_and_miniature_configs_load_or_raise_lora_merge_error(draw):
    for load, model in _configs():
        path = write("config.yaml", draw.draw(document(keyed(model))))
        with contextlib.suppress(LoraMergeError):
            load(path)


# --- data rows --------------------------------------------------------------------------------------------------

messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]) | values,
                                           "content": st.text(max_size=20) | st.sampled_from(ODD) | values}),
                    max_size=3)
rows = (st.fixed_dictionaries({"messages": messages}, optional={"metric": values})
        | st.fixed_dictionaries({"prompt": st.text(max_size=20) | values, "completion": st.text(max_size=20) | values})
        | st.fixed_dictionaries({"prompt": st.text(max_size=20) | st.sampled_from(ODD),
                                 "metric": st.sampled_from(["exact", "contains", "choice", "refusal", "compliance",
                                                            "loss", "sentiment"]) | values},
                                optional={"answer": values, "choices": values, "completion": values, "id": values})
        | values)
RAW_LINES = ["[" * 20_000 + "]" * 20_000, '{"prompt": "a", "completion": "b", "n": ' + "9" * 5000 + "}",
             '{"prompt": "a", "metric": "exact", "answer": ' + "9" * 5000 + "}", '{"prompt": "a\u2028b"',
             '{"a": ' + "{\"k\": " * 2000 + "1" + "}" * 2000 + "}", "\x00", "NaN", '"\u2028"']
lines = st.lists(rows.map(lambda r: json.dumps(r, ensure_ascii=False)) | st.sampled_from(RAW_LINES), min_size=1,
                 max_size=4)


def jsonl(text_lines: list[str], not_utf8: bool) -> bytes:
    data = "\n".join(text_lines).encode("utf-8", "surrogatepass") + b"\n"
    return b"\xff" + data if not_utf8 else data


@SETTINGS
@given(lines, st.booleans(), st.booleans())
def test_data_rows_through_data_validate_and_the_loaders(text_lines, not_utf8, against):
    from lora_merge.evaluate.sets import load_eval_file
    from lora_merge.train.data import load_data

    path = write("rows.jsonl", jsonl(text_lines, not_utf8))
    exits_0_or_2(invoke(["data", "validate", str(path), *(["--against", str(path)] if against else [])]))
    for load in (load_data, load_eval_file):
        with contextlib.suppress(LoraMergeError):
            load(path)
    with contextlib.suppress(LoraMergeError):
        load_data([json.loads(line) for line in text_lines if _parses(line)])  # rows handed over in memory


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True
