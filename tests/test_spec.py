"""Spec strings: parsing, composition rules and the error messages a user sees."""

from __future__ import annotations

import pytest

from ropelab import pe
from ropelab.core.errors import SpecError
from ropelab.pe import canonical_spec, parse_spec
from tests.helpers import CANONICAL


def test_every_canonical_name_is_registered():
    assert set(CANONICAL) <= {m.name for m in pe.methods()}


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("rope", "rope"),
        ("yarn:factor=2", "rope+yarn:factor=2"),
        ("hope+yarn:factor=2", "hope+yarn:factor=2"),
        (" HOPE + PI:factor=4 ", "hope+pi:factor=4"),
        ("yarn:factor=4,beta_fast=16", "rope+yarn:factor=4,beta_fast=16"),
        ("pi", "rope+pi:factor=2"),
        ("fire:shared=yes", "fire:shared=true"),
    ],
)
def test_canonical_spec(spec, canonical):
    assert canonical_spec(spec) == canonical


def test_transforms_chain_in_order():
    parts = parse_spec("hope+pi:factor=2+yarn:factor=2")
    assert [p.info.name for p in parts] == ["hope", "pi", "yarn"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty position method"),
        ("rop", "unknown position method 'rop'; known methods: rope, hope"),
        ("yarn:fctor=2", "yarn: unknown parameter 'fctor'; allowed parameters: factor, beta_fast"),
        ("yarn:factor=abc", "yarn: factor='abc' is not valid; factor must be a number >= 1"),
        ("pi:factor=0.5", "pi: factor='0.5' is out of range; factor must be a number >= 1"),
        ("yarn:factor=inf", "factor must be finite"),
        ("yarn:factor", "malformed parameter 'factor'; write key=value"),
        ("yarn:factor=2,factor=3", "given twice"),
        ("alibi+yarn:factor=2", "'yarn' rescales RoPE frequencies, but 'alibi' has none"),
        ("hope+alibi", "only one base encoding per spec"),
        ("rope++pi", "empty method between '+' signs"),
        ("learned:max_len=-1", "max_len must be an integer >= 0"),
        ("fire:shared=maybe", "shared must be true or false"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(SpecError) as error:
        parse_spec(spec)
    assert message in str(error.value)


def test_every_method_documents_paper_and_parameters():
    for info in pe.methods():
        assert (
            info.description
            and info.paper
            and info.family
            and info.kind in ("rotary", "transform", "encoding", "window")
        )
        for param in info.params:
            assert param.help and param.allowed()


@pytest.mark.parametrize(
    ("text", "specs"),
    [
        ("rope", ["rope"]),
        ("rope,hope,alibi", ["rope", "hope", "alibi"]),
        ("rope,hirope:split=0.5,window=256,yarn:factor=2", ["rope", "hirope:split=0.5,window=256", "yarn:factor=2"]),
        ("hirope:split=0.5,window=256,rope", ["hirope:split=0.5,window=256", "rope"]),
        ("hope+yarn:factor=2,beta_fast=32,rerope", ["hope+yarn:factor=2,beta_fast=32", "rerope"]),
        ("yarn:factor=2,beta_fast=16,hope+pi:factor=4", ["yarn:factor=2,beta_fast=16", "hope+pi:factor=4"]),
        ("hope+pi:factor=2+yarn:factor=2,beta_fast=8", ["hope+pi:factor=2+yarn:factor=2,beta_fast=8"]),
        (" rope , hirope:split=0.5 , window = 256 ,hope ", ["rope", "hirope:split=0.5,window=256", "hope"]),
        ("rope,ntk:factor=2,yarn:factor=2,rerope,self-extend,hope,hirope", None),  # `ropelab compare`'s default
    ],
)
def test_split_specs(text, specs):
    got = pe.split_specs(text)
    assert got == (specs if specs is not None else text.split(","))
    for spec in got:
        parse_spec(spec)  # every item is a whole, valid spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty list of position methods"),
        ("  ", "empty list of position methods"),
        ("rope,,hope", "item 2 is empty"),
        ("rope,", "item 2 is empty"),
        (",rope", "item 1 is empty"),
        ("factor=2,rope", "parameter 'factor=2' comes before any method; write METHOD:key=value"),
        ("rope,factor=2", "parameter 'factor=2' follows 'rope', which has no ':' parameters; write rope:factor=2"),
        ("hope+yarn,factor=2", "follows 'hope+yarn', which has no ':' parameters"),
    ],
)
def test_split_specs_errors_are_one_line(text, message):
    with pytest.raises(SpecError) as error:
        pe.split_specs(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_every_method_has_a_known_family_and_kind():
    from ropelab.pe import methods
    from ropelab.pe.base import FAMILIES, KINDS, MethodInfo

    for info in methods():
        assert info.family in FAMILIES and info.kind in KINDS, info.name
    with pytest.raises(ValueError, match="family 'rotary'"):
        MethodInfo(name="x", family="rotary", kind="rotary", description="", paper="")


@pytest.mark.parametrize(
    ("requested", "composed", "note"),
    [
        ("self-extend", "self-extend+llama3:factor=8", "runs over the model's own llama3:factor=8"),
        ("hirope:window=8", "hirope:window=8+llama3:factor=8", "runs over the model's own"),
        ("rope+llama3:factor=8", "rope+llama3:factor=8", None),  # the model's own
        ("rope+llama3:factor=8+pi:factor=2", "rope+llama3:factor=8+pi:factor=2", None),  # composed as written
        ("rope", "rope", "rope replaces the model's own rope+llama3:factor=8"),
        ("rope+yarn:factor=2", "rope+yarn:factor=2", "replaces the model's own"),
        ("hope", "hope", "replaces the model's own"),
        ("alibi", "alibi", "replaces the model's own"),
    ],
)
def test_compose_keeps_or_names_the_models_own_scaling(requested, composed, note):
    got, said = pe.compose("rope+llama3:factor=8", requested)
    assert got == composed
    assert (said is None) == (note is None) and (note is None or note in said)


def test_compose_refuses_a_lone_transform_that_would_drop_the_models_scaling():
    with pytest.raises(SpecError, match=r"write rope\+llama3:factor=8\+yarn:factor=2 to compose"):
        pe.compose("rope+llama3:factor=8", "yarn:factor=2")
    assert pe.compose("rope", "yarn:factor=2") == ("rope+yarn:factor=2", None)  # no scaling to keep
    assert pe.compose("alibi", "self-extend") == ("self-extend", None)
