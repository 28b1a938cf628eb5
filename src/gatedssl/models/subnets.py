"""A named sub-network of a backbone: which BN slot it uses and how it picks channels.

    dense      every channel, the dense BN set
    gated      per-input channels chosen by the gates, the gated BN set
    width0.5   the first round(0.5 * C) channels of every conv (slimmable), its own BN set

A backbone runs any of them (`backbone(x, "width0.5")`); evaluation, the summary, the report
and export loop over a run's sub-network names and never name one by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..names import parse_subnet, width_name


@dataclass(frozen=True)
class SubNet:
    name: str
    kind: str  # "dense" | "gated" | "width"
    width: float = 1.0

    @property
    def bn_slot(self) -> str:
        """Attribute name of this sub-network's BN in every switchable BN (module names cannot hold a dot)."""
        return self.name.replace(".", "_")

    @property
    def gated(self) -> bool:
        return self.kind == "gated"

    def channels(self, full: int) -> int:
        """Channels of a layer that has `full` in the dense network."""
        return full if self.kind != "width" else slim_channels(full, self.width)


def slim_channels(full: int, width: float) -> int:
    """round(width * full), at least one channel."""
    return max(1, round(width * full))


def as_subnet(subnet: str | SubNet | bool) -> SubNet:
    """A SubNet from its name (True/False: the older spelling of gated/dense)."""
    if isinstance(subnet, SubNet):
        return subnet
    if isinstance(subnet, bool):
        subnet = "gated" if subnet else "dense"
    kind, width = parse_subnet(subnet)
    return SubNet(width_name(width) if kind == "width" else kind, kind, width)


DENSE, GATED = as_subnet("dense"), as_subnet("gated")
