"""What a run trains, as table entries: its sub-networks, the pairs its SSL loss compares, its regularisers.

    dual       view 1 -> gated, view 2 -> dense (this method, "Dual"); budget + bound losses
    dense      both views dense, no gates trained (vanilla SSL, "B1")
    gated      both views gated (gated-only SSL as in the IMVIP paper, "B2"); budget + bound losses
    slimmable  the full width learns by SSL; every step the smallest width and `slim_random` others
               learn by in-place distillation from it (DSPNet's sandwich rule)
    posthoc    gates added to a pretrained dense encoder: the gated pass learns to match the frozen
               dense pass (feature distillation) under the budget + bound losses

Adding a mode is one entry in MODES; the objective, the loop and evaluation read it.
A side is (view index, sub-network name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..names import width_name

Side = tuple[int, str]
Pair = tuple[Side, Side]


@dataclass(frozen=True)
class ModeOptions:
    """The run's settings that modes read."""

    pairing: str = "reference"  # reference: (gated view 1, dense view 2); symmetric: also the swapped pair
    widths: tuple[float, ...] = ()  # slimmable widths, 1.0 included
    slim_random: int = 1  # widths drawn each step besides the full and the smallest
    finetune_dense: bool = False  # posthoc: the dense weights move too


@dataclass(frozen=True)
class Mode:
    name: str
    label: str  # what the sources call this system
    subnets: Callable[[ModeOptions], tuple[str, ...]]
    ssl_pairs: Callable[[ModeOptions, bool], list[Pair]]  # (options, gates_on) -> pairs the SSL loss compares
    distill_pairs: Callable[[ModeOptions, bool], list[Pair]] | None = None  # (student, teacher) pairs; the teacher is detached
    distill_space: str = "projection"  # students meet teachers after the projector or on the backbone's features
    budget: bool = False  # budget + bound losses on every gated side
    frozen_dense: Callable[[ModeOptions], bool] = field(default=lambda options: False)
    short_label: str = ""  # the report's name for a run of this mode (default: the label)

    @property
    def report_label(self) -> str:
        return self.short_label or self.label


DENSE_PAIR: list[Pair] = [((0, "dense"), (1, "dense"))]


def _dual_pairs(options: ModeOptions, gates_on: bool) -> list[Pair]:
    if not gates_on:
        return DENSE_PAIR
    pairs = [((0, "gated"), (1, "dense"))]
    if options.pairing == "symmetric":
        pairs.append(((1, "gated"), (0, "dense")))
    if options.pairing == "plus-dense":  # the dense pass also learns as B1 does, from a dense partner (issue 21's lever)
        pairs.append(((0, "dense"), (1, "dense")))
    return pairs


def slim_names(options: ModeOptions) -> tuple[str, ...]:
    """The smaller widths' names, widest first."""
    return tuple(width_name(w) for w in sorted(options.widths, reverse=True) if w < 1)


def _sandwich(options: ModeOptions, gates_on: bool) -> list[Pair]:
    """The smallest width and `slim_random` of the others, each on both views, distilled from the full width.

    The draw uses torch's CPU generator, whose state checkpoints save: a resumed run draws the same widths."""
    import torch  # here, so that the table itself (names, labels) loads without torch: the reports read it

    names = slim_names(options)
    if not names:
        return []
    middle = names[:-1]
    drawn = {middle[i] for i in torch.randperm(len(middle), device="cpu")[: options.slim_random].tolist()} if middle else set()
    chosen = [n for n in names if n in drawn or n == names[-1]]
    return [((view, name), (view, "dense")) for name in chosen for view in (0, 1)]


MODES: dict[str, Mode] = {
    m.name: m
    for m in [
        Mode(
            "dual",
            "Dual: dense + gated in one run (Krishna et al., BMVC 2023)",
            short_label="Dual",
            subnets=lambda o: ("dense", "gated"),
            ssl_pairs=_dual_pairs,
            budget=True,
        ),
        Mode(
            "dense",
            "B1: vanilla SSL (dense)",
            subnets=lambda o: ("dense",),
            ssl_pairs=lambda o, on: DENSE_PAIR,
            short_label="B1 (dense only)",
        ),
        Mode(
            "gated",
            "B2: gated-only SSL",
            short_label="B2 (gated only)",
            subnets=lambda o: ("dense", "gated"),
            ssl_pairs=lambda o, on: [((0, "gated"), (1, "gated"))] if on else DENSE_PAIR,
            budget=True,
        ),
        Mode(
            "slimmable",
            "Slimmable SSL (DSPNet)",
            short_label="Slimmable (DSPNet)",
            subnets=lambda o: ("dense", *slim_names(o)),
            ssl_pairs=lambda o, on: DENSE_PAIR,
            distill_pairs=_sandwich,
        ),
        Mode(
            "posthoc",
            "Post-hoc gating of a pretrained B1 encoder",
            short_label="Post-hoc gating of B1",
            subnets=lambda o: ("dense", "gated"),
            ssl_pairs=lambda o, on: _dual_pairs(o, on) if o.finetune_dense else [],
            distill_pairs=lambda o, on: [((0, "gated"), (0, "dense")), ((1, "gated"), (1, "dense"))],
            distill_space="features",
            budget=True,
            frozen_dense=lambda o: not o.finetune_dense,
        ),
    ]
}


def get_mode(name: str) -> Mode:
    if name not in MODES:
        raise KeyError(f"unknown mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name]
