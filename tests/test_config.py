"""The config schema: presets, overrides, defaults, and one clear error per kind of bad input."""
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from moesim.config import PRESETS, load_config
from moesim.errors import ConfigError

PAPER_MODELS = {"gpt3-medium": (24, 1024, 16), "gpt3-xl": (24, 2048, 16),
                "gpt3-2.7b": (32, 2560, 32), "gpt3-6.7b": (32, 4096, 32)}


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_presets_are_the_papers_models(name):
    cfg = load_config(name)
    layers, hidden, heads = PAPER_MODELS[name]
    assert (cfg.model.layers, cfg.model.hidden, cfg.model.heads) == (layers, hidden, heads)
    assert (cfg.model.vocab, cfg.model.seq_len) == (50257, 2048)
    assert (cfg.moe.experts, cfg.moe.ratio, cfg.moe.capacity_factor) == (64, 0.25, 1.2)
    assert cfg.run.global_batch_tokens == 64 * 2048
    assert cfg.parallel.ep == 32 and cfg.world_size == 32


def test_preset_list():
    assert set(PAPER_MODELS) <= set(PRESETS)


def test_dp_defaults_to_ep_and_world_size():
    cfg = load_config("gpt3-xl", ["parallel.ep=8"])
    assert cfg.parallel.dp_size == 8 and cfg.world_size == 8
    cfg = load_config("gpt3-xl", ["parallel.ep=8", "parallel.dp=16", "parallel.tp=2"])
    assert cfg.world_size == 32


def test_overrides_parse_yaml_scalars():
    cfg = load_config("gpt3-xl", ["moe.structure=dcca", "moe.top_k=8", "moe.capacity_factor=null",
                                  "model.dtype=bf16", "moe.ratio=0.5"])
    assert cfg.moe.structure == "dcca" and cfg.moe.top_k == 8 and cfg.moe.capacity_factor is None
    assert cfg.moe.ratio == 0.5 and cfg.model.dtype_bytes == 2


def test_default_sizes_follow_the_paper():
    cdac = load_config("gpt3-xl", ["moe.structure=cdac"])
    dcca = load_config("gpt3-xl", ["moe.structure=dcca"])
    h = 2048
    assert (cdac.expert_io_dim, cdac.expert_inner_dim, cdac.a2a_dim) == (h, h // 4, h)
    assert (dcca.expert_io_dim, dcca.expert_inner_dim, dcca.a2a_dim) == (h // 4, h, h // 4)
    custom = load_config("gpt3-xl", ["moe.structure=dcca", "moe.low_dim=256", "moe.dcca_expert_hidden=1024"])
    assert (custom.a2a_dim, custom.expert_inner_dim) == (256, 1024)


def test_yaml_file_with_preset_base(tmp_path):
    f = tmp_path / "small.yaml"
    f.write_text(textwrap.dedent("""
        preset: gpt3-medium
        model: {layers: 2, name: tiny}
        parallel: {ep: 4}
    """))
    cfg = load_config(f, ["moe.top_k=2"])
    assert (cfg.model.layers, cfg.model.hidden, cfg.model.name) == (2, 1024, "tiny")
    assert cfg.world_size == 4 and cfg.moe.top_k == 2


BAD = [
    (["moe.top_k=65"], "moe.top_k", "exceeds"),
    (["moe.experts=60"], "moe.experts", "not divisible by ep"),
    (["model.heads=15"], "model.hidden", "not divisible by heads"),
    (["moe.ratio=0.3"], "moe.ratio", "whole"),
    (["moe.colour=red"], "moe.colour", "unknown key"),
    (["model.layers=many"], "model.layers", "integer"),
    (["model.hidden=-8"], "model.hidden", "greater than 0"),
    (["model.dtype=int4"], "model.dtype", "bf16"),
    (["moe.structure=wide"], "moe.structure", "dense"),
    (["parallel.dp=4"], "parallel.ep", "does not divide"),
    (["parallel.tp=3"], "parallel.tp", "divisible"),
    (["parallel.pp=2"], "parallel.pp", "pipeline"),
    (["run.global_batch_tokens=1000"], "run.global_batch_tokens", "divisible by dp"),
    (["run.micro_batch_tokens=3000"], "run.micro_batch_tokens", "does not divide"),
    (["run.mode=decode", "run.prompt_len=4000"], "run.prompt_len", "seq_len"),
    (["run.mode=serve"], "run.mode", "train"),
    (["moe.structure=dense"], "parallel.ep", "MoE structure"),
    (["moe.routing=file"], "moe.routing_file", "no routing_file"),
    (["nosuch.key=1"], "nosuch.key", "unknown section"),
    (["moe.top_k"], "", "section.key=value"),
]


@pytest.mark.parametrize("overrides,field,reason", BAD)
def test_bad_config_names_field_and_reason(overrides, field, reason):
    with pytest.raises(ConfigError) as err:
        load_config("gpt3-xl", overrides)
    assert err.value.field == field
    assert reason in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("gpt5-moe")
    nomodel = tmp_path / "nomodel.yaml"
    nomodel.write_text("moe: {top_k: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(nomodel)
    assert err.value.field == "model" and "required" in str(err.value)


values = st.one_of(st.integers(-4, 300), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                   st.booleans(), st.text(max_size=6), st.sampled_from(["cdac", "dcca", "dense", "train", "bf16"]))
keys = st.sampled_from(["model.layers", "model.hidden", "model.heads", "model.dtype", "moe.structure",
                        "moe.experts", "moe.top_k", "moe.ratio", "moe.capacity_factor", "moe.shared_experts",
                        "parallel.ep", "parallel.dp", "parallel.tp", "run.mode", "run.global_batch_tokens",
                        "run.batch_size", "run.prompt_len", "moe.bogus"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_any_override_either_validates_or_raises_config_error(pairs):
    """Whatever the user types, the result is a valid Config or one ConfigError naming a field."""
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config("gpt3-medium", overrides)
    except ConfigError as exc:
        assert str(exc).startswith("config")
        return
    # valid configs satisfy every invariant the rest of moesim relies on
    assert cfg.model.hidden % cfg.model.heads == 0
    assert cfg.parallel.dp_size % cfg.parallel.ep == 0
    if cfg.is_moe:
        assert cfg.moe.top_k <= cfg.moe.experts and cfg.moe.experts % cfg.parallel.ep == 0
        assert cfg.a2a_dim >= 1 and cfg.expert_inner_dim >= 1
