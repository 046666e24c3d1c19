"""One registry of providers, and every place that must list each of them.

Adding a provider touches its descriptor (`domain/providers/<name>.py`), its client
(`adapters/providers/<name>.py`), its emulator and the lists of providers; these tests fail
until every list has it (and when one lists a provider the registry does not know).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from batchline.bootstrap import make_client
from batchline.config import Settings
from batchline.domain.pricing import PRICES
from batchline.domain.providers import base
from batchline.domain.providers.registry import KNOWN_PROVIDERS, PROVIDERS
from batchline_tools.local.stack import COMPONENTS, PROVIDER_EMULATORS
from batchline_tools.memory import MemoryBlobStore

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "shared" / "batchline"
NAMES = sorted(KNOWN_PROVIDERS)
#: Where a provider's name may be compared: its own files and the registry.
PROVIDER_HOMES = ("domain/providers/", "adapters/providers/")
#: Known exceptions, each a provider's own code still outside those folders (to move there).
#: OpenAI's webhook receiver (issue 15) checks that a batch is an OpenAI chunk's.
NOT_YET_HOME = ("services/openai_webhooks.py",)
NAME_COMPARISON = re.compile(
    r"""[=!]=\s*["'](?P<a>\w+)["']|["'](?P<b>\w+)["']\s*[=!]=|\bin\s*\(\s*["'](?P<c>\w+)["']"""
)


@pytest.mark.parametrize("name", NAMES)
def test_each_registered_provider_has_its_descriptor_and_its_client(name: str) -> None:
    descriptor = PROVIDERS[name]
    assert descriptor.name == name
    module = importlib.import_module(f"batchline.domain.providers.{name}")
    assert module.DESCRIPTOR is descriptor
    for member in (*base.Provider.__annotations__, *_protocol_methods()):
        assert hasattr(descriptor, member), f"{name}'s descriptor has no {member}"
    settings = Settings(project="p", input_bucket="i", output_bucket="o", work_bucket="w")
    block = settings.provider(name)
    assert isinstance(descriptor.chunk_limits(block), base.ChunkLimits)
    client = make_client(name, settings, MemoryBlobStore())  # the SDK loads on first call
    assert client.name == name


def _protocol_methods() -> list[str]:
    return [
        m for m in vars(base.Provider) if not m.startswith("_") and callable(vars(base.Provider)[m])
    ]


def test_native_formats_do_not_overlap() -> None:
    """A native line is one provider's: no key marks two providers' formats."""
    seen: dict[str, str] = {}
    for name, descriptor in PROVIDERS.items():
        for key in descriptor.native_keys:
            assert key not in seen, f"{key!r} marks both {seen[key]} and {name} lines"
            seen[key] = name


def test_every_provider_has_a_settings_block_and_nothing_else_does() -> None:
    settings = Settings(project="p", input_bucket="i", output_bucket="o", work_bucket="w")
    assert sorted(settings.providers) == NAMES
    assert settings.enabled_providers == KNOWN_PROVIDERS


def test_every_provider_has_an_emulator_in_the_local_stack() -> None:
    assert sorted(PROVIDER_EMULATORS) == NAMES
    assert set(NAMES) <= set(COMPONENTS)
    for name, (module, _, _) in PROVIDER_EMULATORS.items():
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"


def test_every_provider_has_prices_and_every_price_a_known_provider() -> None:
    priced = {key.partition("/")[0] for key in PRICES}
    assert sorted(priced) == NAMES


def test_infra_can_enable_exactly_the_registered_providers() -> None:
    main = (ROOT / "infra" / "main.tf").read_text()
    block = re.search(r"\n  providers = \{\n(.*?)\n  \}", main, re.S)
    assert block is not None, "infra/main.tf: local.providers not found"
    assert sorted(re.findall(r"^\s+(\w+)\s+=", block.group(1), re.M)) == NAMES
    variables = (ROOT / "infra" / "variables.tf").read_text()
    accepted = re.search(r"contains\(\[([^\]]*)\], p\)", variables)
    assert accepted is not None, "infra/variables.tf: enabled_providers' validation not found"
    assert sorted(re.findall(r'"(\w+)"', accepted.group(1))) == NAMES


def test_the_readme_lists_every_provider() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("**Providers.**", 1)[1].split("\n\n", 2)[1]
    assert sorted(re.findall(r"^\| `(\w+)` \|", table, re.M)) == NAMES
    layout = readme.split("### Code layout", 1)[1].split("## ", 1)[0]
    for name in NAMES:
        assert f"{name}.py" in layout or name in layout, f"the README's layout misses {name}"


def test_no_module_outside_the_providers_own_files_compares_a_providers_name() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(PROVIDER_HOMES) or relative in NOT_YET_HOME:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in NAME_COMPARISON.finditer(line):
                if (match["a"] or match["b"] or match["c"]) in KNOWN_PROVIDERS:
                    found.append(f"{relative}:{number}: {line.strip()}")
    assert found == []
