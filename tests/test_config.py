from pathlib import Path

import pytest
from pydantic import Field

from refinery.compression.puzzle.config import PuzzleRecipe
from refinery.config import Section, apply_overrides, load_config, parse_override, read_yaml
from refinery.data.math_web.pipeline import MathCCConfig
from refinery.data.reasoning.acereason import CurationConfig
from refinery.data.reasoning.crossthink import CrossThinkConfig
from refinery.data.rephrase.beyondweb import BeyondWebConfig
from refinery.data.safety.cultureguard import CultureGuardConfig
from refinery.errors import ConfigError
from refinery.models.pretrain import PretrainConfig
from refinery.quickstart import QuickstartConfig
from refinery.reward_models.config import RMConfig
from refinery.rl.config import RLConfig
from refinery.rl.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]


class Inner(Section):
    lr: float = 1e-3
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.95])


class Outer(Section):
    name: str = "x"
    trainer: Inner = Field(default_factory=Inner)


def test_override_values_are_typed_as_yaml():
    assert parse_override("trainer.lr=1e-4") == (["trainer", "lr"], 1e-4)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=hello world") == (["a"], "hello world")


def test_overrides_create_sections_and_do_not_mutate_input():
    base = {"trainer": {"lr": 1.0}}
    out = apply_overrides(base, ["trainer.lr=2", "new.deep.key=3"])
    assert out == {"trainer": {"lr": 2}, "new": {"deep": {"key": 3}}}
    assert base == {"trainer": {"lr": 1.0}}


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError):
        parse_override(bad)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_unknown_key_suggests_closest_at_the_right_depth():
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.lrr'; did you mean 'trainer.lr'\?"):
        load_config(Outer, None, ["trainer.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'traner'; did you mean 'trainer'\?"):
        load_config(Outer, None, ["traner.lr=1"])


def test_unknown_key_without_a_close_match_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"valid keys here: lr, betas"):
        load_config(Outer, None, ["trainer.zzzzzz=1"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"trainer.lr: .*valid number.*got 'fast'"):
        load_config(Outer, None, ["trainer.lr=fast"])


def test_malformed_yaml_reports_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ntrainer:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"r.yaml line \d+, column \d+: malformed YAML"):
        read_yaml(p)


def test_non_mapping_and_missing_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")


RECIPES = {"pretrain.yaml": PretrainConfig, "pretrain_text.yaml": PretrainConfig, "quickstart.yaml": QuickstartConfig,
           "prorl.yaml": RLConfig, "acereason.yaml": RLConfig, "acereason_1_1.yaml": RLConfig,
           "crossthink.yaml": RLConfig, "sft.yaml": SFTConfig, "helpsteer2_pref.yaml": RMConfig,
           "armorm.yaml": RMConfig, "rm_hh_rlhf.yaml": RMConfig, "puzzle.yaml": PuzzleRecipe,
           "nemotron_cc_math.yaml": MathCCConfig, "acereason_curation.yaml": CurationConfig,
           "beyondweb.yaml": BeyondWebConfig, "crossthink_data.yaml": CrossThinkConfig,
           "cultureguard.yaml": CultureGuardConfig}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_recipes_validate(name):
    overrides = {"pretrain_text.yaml": ["data.text_files=[x.txt]"],
                 "sft.yaml": ["data.jsonl_files=[x.jsonl]"]}.get(name, [])
    load_config(RECIPES[name], ROOT / "recipes" / name, overrides)


def test_every_recipe_is_covered():
    assert {p.name for p in (ROOT / "recipes").glob("*.yaml")} <= set(RECIPES)


def test_quickstart_recipe_matches_builtin_defaults():
    from_file = load_config(QuickstartConfig, ROOT / "recipes" / "quickstart.yaml")
    assert from_file.pretrain.trainer == QuickstartConfig().pretrain.trainer
    assert from_file.pretrain.data == QuickstartConfig().pretrain.data
    assert from_file.rl == QuickstartConfig().rl
    assert from_file.rm == QuickstartConfig().rm
    assert from_file.sparsity == QuickstartConfig().sparsity
    assert from_file.puzzle == QuickstartConfig().puzzle
    assert from_file.stages == QuickstartConfig().stages


def test_every_config_field_is_documented():
    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Section):
                walk(ann, f"{prefix}{name}.")
            else:
                assert field.description, f"{prefix}{name} has no description"

    walk(PretrainConfig)
    walk(QuickstartConfig)
    walk(RLConfig)
    walk(RMConfig)


def test_partial_override_keeps_the_sections_factory_defaults():
    """Overriding one field of a factory-made section must not reset its other fields to class defaults."""

    class Inner2(Section):
        a: int = 1
        b: int = 2

    class Outer2(Section):
        inner: Inner2 = Field(default_factory=lambda: Inner2(a=10, b=20))

    cfg = load_config(Outer2, None, ["inner.b=5"])
    assert (cfg.inner.a, cfg.inner.b) == (10, 5)
    assert load_config(Outer2, None, []).inner.a == 10
    with pytest.raises(ConfigError, match="unknown key 'inner.c'"):
        load_config(Outer2, None, ["inner.c=1"])
    from refinery.rl.config import RLConfig

    rl = load_config(RLConfig, None, ["policy.bootstrap.trainer.steps=5"])
    assert rl.policy.bootstrap.trainer.steps == 5 and rl.policy.bootstrap.name == "sft-bootstrap"
