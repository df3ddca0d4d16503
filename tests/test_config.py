import dataclasses
from typing import Literal

import pytest

from benchmark.config import build_config, config_digest, config_to_dict, parse_overrides
from benchmark.errors import SslBenchError


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    ks: tuple[int, ...] = (10, 20)
    temperature: float = 0.07
    normalize: bool = True
    costs: Literal["vissl", "fair"] = "vissl"
    split: str | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def test_overrides_are_coerced_to_field_types():
    config = build_config(ToyConfig, parse_overrides(
        ["ks=1, 5,7", "temperature=0.1", "normalize=false", "costs=fair", "split=val"]), "toy")
    assert config == ToyConfig(ks=(1, 5, 7), temperature=0.1, normalize=False, costs="fair", split="val")
    assert build_config(ToyConfig, {"split": "none"}, "toy").split is None


@pytest.mark.parametrize("pair, message", [
    ("nope=1", "unknown --set key 'nope' for toy; valid keys: costs, k"),
    ("ks=a,b", "expected a comma-separated list of integers"),
    ("temperature=hot", "expected a number"),
    ("normalize=maybe", "expected true or false"),
    ("costs=svm", "expected one of vissl, fair"),
    ("temperature=-1", "temperature must be > 0"),
])
def test_bad_overrides_name_key_and_expectation(pair, message):
    with pytest.raises(SslBenchError, match=message.replace("(", r"\(")):
        build_config(ToyConfig, parse_overrides([pair]), "toy")


def test_override_without_equals_is_a_user_error():
    with pytest.raises(SslBenchError, match="key=value"):
        parse_overrides(["temperature"])


def test_config_dict_and_digest_are_stable():
    data = config_to_dict(ToyConfig())
    assert data["ks"] == [10, 20]
    assert config_digest(data) == config_digest(dict(reversed(list(data.items()))))
    assert config_digest(data) != config_digest({**data, "temperature": 0.1})
