import pytest

from benchmark.errors import SslBenchError
from benchmark.registry import PROTOCOLS, Registry


def test_decorator_lazy_and_lookup():
    registry = Registry("widget")

    @registry.register("alpha")
    class Alpha:
        """First widget."""

    registry.register("beta", "collections:OrderedDict")
    assert registry.get("alpha") is Alpha
    from collections import OrderedDict
    assert registry.get("beta") is OrderedDict
    assert registry.names() == ["alpha", "beta"]
    assert registry.names("b*") == ["beta"]
    assert "alpha" in registry


def test_duplicate_name_with_other_target_is_an_error():
    registry = Registry("widget")
    registry.register("alpha", "collections:OrderedDict")
    registry.register("alpha", "collections:OrderedDict")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("alpha", "collections:Counter")


def test_unknown_name_suggests_the_closest():
    registry = Registry("widget")
    registry.register("voc07_svm", "collections:OrderedDict")
    with pytest.raises(SslBenchError, match="Did you mean 'voc07_svm'"):
        registry.get("voc07svm")


def test_freeze_and_clear():
    registry = Registry("widget")
    registry.freeze()
    with pytest.raises(RuntimeError):
        registry.register("x", "collections:Counter")
    registry._clear()
    registry.register("x", "collections:Counter")
    assert registry.names() == ["x"]


def test_builtin_protocols_are_discovered():
    assert "knn" in PROTOCOLS.names()
    assert PROTOCOLS.origin("knn") == "protocols.knn"
