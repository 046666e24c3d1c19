"""The providers batchline knows, by name: the one list the rest of the code loops over.

Adding a provider: its descriptor (`domain/providers/<name>.py`, a `DESCRIPTOR`
implementing `base.Provider`), its client (`adapters/providers/<name>.py`, a `make_client`),
an entry here, its emulator (`batchline_emulators/<name>.py`, listed in
`batchline_tools/local/stack.py`), its
prices (`domain/pricing.py`) and the lists of providers in infra and the README;
`tests/unit/test_provider_registry.py` fails until every one of them has it.
Which of them a deployment runs is configuration (`BATCHLINE_ENABLED_PROVIDERS`).
"""

from __future__ import annotations

from collections.abc import Iterator

from batchline.domain.providers import anthropic, openai, vertex
from batchline.domain.providers.base import Provider
from batchline.errors import ConfigError

#: Every known provider's descriptor, by name. Native lines are told apart in this order.
PROVIDERS: dict[str, Provider] = {
    "openai": openai.DESCRIPTOR,
    "anthropic": anthropic.DESCRIPTOR,
    "vertex": vertex.DESCRIPTOR,
}
KNOWN_PROVIDERS = frozenset(PROVIDERS)


def provider(name: str) -> Provider:
    """The descriptor of provider `name`; ConfigError when batchline knows no such one."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"provider {name!r} is not configured") from None


def descriptors() -> Iterator[Provider]:
    """Every known provider's descriptor, in the registry's order."""
    return iter(PROVIDERS.values())
