"""The one Registry behind losses, selectors and benchmarks: duplicates refused, typos answered with the fix."""

from __future__ import annotations

import pytest

from obliviate.benchmarks import BENCHMARKS, UnknownBenchmarkError, get_benchmark, register_benchmark
from obliviate.erasure import EraseConfig
from obliviate.erasure.losses import LOSSES, EraseLoss, get_loss, register_loss
from obliviate.erasure.selectors import SELECTORS, Selector, get_selector, register_selector
from obliviate.registry import DuplicateNameError, Registry, UnknownNameError


@pytest.fixture
def widgets() -> Registry:
    registry = Registry("widget", key="kind", hint="Add one with @WIDGETS.register('name').")

    @registry.register("sprocket")
    class Sprocket:
        pass

    @registry.register("spring")
    class Spring:
        pass

    return registry


def test_register_sets_the_name_and_lists_sorted(widgets):
    assert widgets.names() == ["spring", "sprocket"]
    assert list(widgets) == ["spring", "sprocket"] and len(widgets) == 2
    assert "sprocket" in widgets and "gear" not in widgets
    assert widgets.get("sprocket").name == "sprocket"
    assert widgets["spring"].__name__ == "Spring"
    assert [name for name, _ in widgets.items()] == ["spring", "sprocket"]


def test_a_taken_name_is_refused_but_the_same_class_may_register_again(widgets):
    original = widgets.get("sprocket")
    with pytest.raises(DuplicateNameError, match=r"widget 'sprocket' is already registered by .*Sprocket"):
        widgets.register("sprocket")(type("Impostor", (), {}))
    assert widgets.get("sprocket") is original  # the refused class did not overwrite the entry
    assert widgets.register("sprocket")(original) is original  # re-importing a module is harmless
    assert len(widgets) == 2


def test_unknown_name_lists_known_names_suggests_the_nearest_and_says_where_to_look(widgets):
    with pytest.raises(UnknownNameError) as info:
        widgets.get("sprokcet")
    message = str(info.value)
    assert message.startswith("unknown widget 'sprokcet' (recipe key `kind`). Did you mean 'sprocket'?")
    assert "Known widgets: spring, sprocket." in message
    assert message.endswith("Add one with @WIDGETS.register('name').")
    assert isinstance(info.value, ValueError)  # the CLI reports ValueErrors as user errors


def test_far_names_get_no_suggestion_and_non_strings_are_unknown(widgets):
    with pytest.raises(UnknownNameError) as info:
        widgets.get("turbine")
    assert "Did you mean" not in str(info.value)
    assert ["x"] not in widgets  # a YAML list is not a name (and not a TypeError from hashing)
    with pytest.raises(UnknownNameError, match=r"unknown widget \['x'\]"):
        widgets.get(["x"])
    assert widgets.get("turbine", None) is None  # an explicit default, as dict.get


def test_check_raises_the_callers_error_type(widgets):
    widgets.check("spring")
    with pytest.raises(KeyError, match="Did you mean 'spring'"):
        widgets.check("sprin", error=KeyError)


def test_registration_needs_a_name_and_custom_errors_subclass_unknown_name():
    with pytest.raises(TypeError, match="non-empty string"):
        Registry("widget").register("")
    with pytest.raises(TypeError, match="must subclass UnknownNameError"):
        Registry("widget", error=KeyError)


@pytest.mark.parametrize(
    ("registry", "kind", "builtins"),
    [
        (LOSSES, "loss", {"emso", "ga", "graddiff", "npo"}),
        (SELECTORS, "selector", {"contrastive", "magnitude", "random", "all"}),
        (BENCHMARKS, "benchmark", {"perplexity", "multiple_choice", "evaluate_metric", "lm_eval", "memorization"}),
    ],
)
def test_losses_selectors_and_benchmarks_share_the_registry(registry, kind, builtins):
    assert isinstance(registry, Registry) and registry.kind == kind
    assert builtins <= set(registry.names())
    for name in builtins:
        assert registry.get(name).name == name


def test_project_wrappers_use_their_registry():
    # The wrappers keep their names (other modules call them) and raise the registry's error.
    assert type(get_loss(EraseConfig(method="ga"))) is LOSSES.get("ga")
    assert type(get_selector(EraseConfig(selector="magnitude"))) is SELECTORS.get("magnitude")
    assert get_benchmark("perplexity") is BENCHMARKS.get("perplexity")
    config = EraseConfig()
    config.method, config.selector = "npoo", "randm"  # past EraseConfig's own validation
    with pytest.raises(UnknownNameError, match=r"unknown loss 'npoo' \(recipe key `method`\). Did you mean 'npo'\?"):
        get_loss(config)
    with pytest.raises(UnknownNameError, match=r"unknown selector 'randm'.*Did you mean 'random'\?.*Known selectors"):
        get_selector(config)
    with pytest.raises(UnknownBenchmarkError, match=r"Did you mean 'perplexity'\?.*@register_benchmark"):
        get_benchmark("perplexty")


def test_project_registries_refuse_a_second_class_under_a_builtin_name():
    with pytest.raises(DuplicateNameError, match="loss 'ga' is already registered"):
        register_loss("ga")(type("OtherGA", (EraseLoss,), {}))
    with pytest.raises(DuplicateNameError, match="selector 'all' is already registered"):
        register_selector("all")(type("OtherAll", (Selector,), {}))
    with pytest.raises(DuplicateNameError, match="benchmark 'perplexity' is already registered"):
        register_benchmark("perplexity")(type("OtherPerplexity", (), {}))
    assert LOSSES.get("ga").__name__ != "OtherGA" and SELECTORS.get("all").__name__ != "OtherAll"
