"""The one YAML-into-pydantic loader (lora_merge.core.yaml_model), and every config family loading through it."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel, ConfigDict, Field

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.yaml_model import load_yaml_model


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pack: str
    weight: float = 1.0


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    name: str = "x"
    items: list[Inner] = []
    modules: str | list[str] = "all"
    rate: float = Field(default=0.5, gt=0)


def load(tmp_path, text: str, name: str = "s.yaml") -> Settings:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_yaml_model(path, Settings, "test config")


def error(tmp_path, text: str) -> str:
    with pytest.raises(LoraMergeError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_a_good_file_and_an_empty_one(tmp_path):
    assert load(tmp_path, "seed: 3\nitems: [{pack: a}]\n") == Settings(seed=3, items=[Inner(pack="a")])
    assert load(tmp_path, "") == Settings()


def test_unknown_key_is_named_with_the_keys_known_beside_it(tmp_path):
    msg = error(tmp_path, "sed: 3\n")
    assert msg.startswith(f"test config {tmp_path / 's.yaml'}: sed: unknown key")
    assert "(known keys: seed, name, items, modules, rate)" in msg
    msg = error(tmp_path, "items: [{pack: a, wieght: 2}]\n")
    assert "items.0.wieght: unknown key" in msg and "known keys of items.0: pack, weight" in msg


def test_wrong_type_names_the_key_and_the_file(tmp_path):
    msg = error(tmp_path, "seed: many\nrate: -1\n")
    assert str(tmp_path / "s.yaml") in msg
    assert re.search(r"seed: Input should be a valid integer", msg) and "rate: Input should be greater than 0" in msg
    assert "known keys" not in msg  # only an unknown key needs the list
    msg = error(tmp_path, "modules: 5\n")  # a union: the key the user wrote, not pydantic's member names
    assert "modules: Input should be a valid string or Input should be a valid list" in msg
    assert "list[str]" not in msg


@pytest.mark.parametrize("text, needle", [("- a\n- b\n", "must be a mapping of key: value, not a list"),
                                          ("just words\n", "must be a mapping of key: value, not a string")])
def test_not_a_mapping(tmp_path, text, needle):
    msg = error(tmp_path, text)
    assert needle in msg and str(tmp_path / "s.yaml") in msg and "known keys: seed" in msg


def test_invalid_yaml(tmp_path):
    msg = error(tmp_path, "seed: [1, 2\n")
    assert msg.startswith(f"test config {tmp_path / 's.yaml'}: not valid YAML")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(LoraMergeError, match="test config .*nope.yaml does not exist"):
        load_yaml_model(tmp_path / "nope.yaml", Settings, "test config")
    with pytest.raises(LoraMergeError, match="is a folder, not a YAML file"):
        load_yaml_model(tmp_path, Settings, "test config")


def test_prepare_runs_between_parsing_and_validation(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("seed: 1\n")
    assert load_yaml_model(path, Settings, "test config", lambda raw: {**raw, "name": "y"}).name == "y"


# Each config family through its public loader: the same bad key is named the same way, by the one loader.

def bad_key(tmp_path, body: str = "", key: str = "colour") -> object:
    path = tmp_path / "bad.yaml"
    path.write_text(f"{body}{key}: red\n")
    return path


def check(load_fn, path, what: str) -> None:
    with pytest.raises(LoraMergeError) as info:
        load_fn(path)
    msg = str(info.value)
    assert msg.startswith(f"{what} {path}: colour: unknown key") and "(known keys: " in msg, msg


def test_merge_recipe_uses_the_loader(tmp_path):
    from lora_merge.fold.merge_recipe import load_merge_recipe
    check(load_merge_recipe, bad_key(tmp_path, "general: g\n"), "merge recipe")


def test_training_recipe_uses_the_loader(tmp_path):
    from lora_merge.train.training_recipe import load_training_recipe
    check(load_training_recipe, bad_key(tmp_path), "recipe")
    (tmp_path / "child.yaml").write_text("extends: bad.yaml\n")  # a parent's bad key is named too
    with pytest.raises(LoraMergeError, match="colour: unknown key"):
        load_training_recipe(tmp_path / "child.yaml")


def test_miniature_config_uses_the_loader(tmp_path):
    from lora_merge.miniature.config import load_config
    check(load_config, bad_key(tmp_path), "miniature config")
    path = tmp_path / "world.yaml"
    path.write_text("world: {general: 10, colour: red}\n")  # a dataclass section, checked before validation
    with pytest.raises(LoraMergeError, match=r"world.yaml: world\.colour: unknown key \(known keys of world: "):
        load_config(path)


def test_study_and_map_configs_use_the_loader(tmp_path):
    from lora_merge.study.config import load_study_config
    from lora_merge.study.map_config import load_map_config
    check(load_study_config, bad_key(tmp_path), "study config")
    check(load_map_config, bad_key(tmp_path, "entries: [{skill: safety, sizes: [4]}]\n"), "map config")
