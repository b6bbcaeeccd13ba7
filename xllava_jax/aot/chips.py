"""TPU generations as libtpu and Cloud TPU name them, topology names, and libtpu's devices of a topology."""

from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 2 ** 30


class BadConfig(ValueError):
    """A setting the AOT tool cannot compile (exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation as libtpu and Cloud TPU name it."""

    topo: str  # libtpu topology prefix (get_topology_desc)
    accel: str  # TPU_ACCELERATOR_TYPE prefix (Cloud TPU name)
    cores_per_chip: int  # what the Cloud TPU name counts per chip
    dims: int  # 2D or 3D chip grid
    hbm: float  # bytes of HBM per chip (one JAX device)
    peak: float  # bf16 FLOP/s per chip


# Public Cloud TPU figures. v5p HBM: 95 GB per chip (taken as 95e9, as bench/memory_plan.py does).
CHIPS = {
    "v4": Chip("v4", "v4", 2, 3, 32 * GiB, 275e12),
    "v5p": Chip("v5p", "v5p", 2, 3, 95e9, 459e12),
    "v5e": Chip("v5e", "v5litepod", 1, 2, 16 * GiB, 197e12),
    "v6e": Chip("v6e", "v6e", 1, 2, 32 * GiB, 918e12),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "v6lite": "v6e"}
TOPOLOGY_HELP = ("a Cloud TPU name (v4-64, v5p-64, v5litepod-256, v5e-16, v6e-64: v4/v5p count TensorCores, "
                 "v5e/v6e chips) or a chip grid (v5p:2x4x4, v4:2x2x2, v5e:2x2, v6e:8x8); generations: "
                 + ", ".join(sorted(CHIPS)))


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed topology: generation, chip grid and the names libtpu wants."""

    chip: Chip
    grid: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def name(self) -> str:
        return f"{self.chip.topo}:{'x'.join(map(str, self.grid))}"

    @property
    def accelerator_type(self) -> str:
        return f"{self.chip.accel}-{self.chips * self.chip.cores_per_chip}"


def default_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid Cloud TPU uses for a slice of `chips` chips (powers of two)."""
    if chips < 1 or chips & (chips - 1):
        raise BadConfig(f"{chips} chips is not a power of two; give the grid explicitly ({TOPOLOGY_HELP})")
    n = chips.bit_length() - 1
    if dims == 2:
        return (2 ** (n // 2), 2 ** (n - n // 2))
    if chips == 4:
        return (2, 2, 1)
    if chips < 4:
        return (1, chips, 1)
    return tuple(2 ** (n // 3 + (1 if i >= 3 - n % 3 else 0)) for i in range(3))


def parse_topology(name: str) -> Topology:
    """`v5p-64` / `v5litepod-256` / `v5p:2x4x4` -> Topology; BadConfig listing the valid forms otherwise."""
    m = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)*))", name.strip().lower())
    gen = ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in CHIPS:
        raise BadConfig(f"unknown TPU topology {name!r}; expected {TOPOLOGY_HELP}")
    chip = CHIPS[gen]
    if m.group(2):
        count = int(m.group(2))
        if count % chip.cores_per_chip:
            raise BadConfig(f"{name}: {gen} names count {chip.cores_per_chip} TensorCores per chip")
        return Topology(chip, default_grid(count // chip.cores_per_chip, chip.dims))
    grid = tuple(int(x) for x in m.group(3).split("x"))
    if len(grid) != chip.dims:
        raise BadConfig(f"{name}: {gen} chip grids have {chip.dims} dimensions; expected {TOPOLOGY_HELP}")
    return Topology(chip, grid)


def one_host(topo: Topology) -> Topology:
    """The 4-chip, single-host slice of the same generation."""
    return Topology(topo.chip, (2, 2, 1) if topo.chip.dims == 3 else (2, 2))


def libtpu_env(topo: Topology) -> dict[str, str]:
    """The environment under which libtpu compiles for `topo` without probing for hardware."""
    return {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": topo.accelerator_type,
            "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def tpu_devices(topo: Topology) -> list:
    """The devices of a TPU topology (one per chip), from libtpu; RuntimeError when libtpu is missing."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError("libtpu is not installed: `pip install -e .[tpu]` (jax[tpu]) to compile for TPU") from e
    os.environ.update(libtpu_env(topo))
    import jax
    from jax.experimental import topologies
    if jax.config.jax_platforms != "cpu":
        raise RuntimeError("set JAX_PLATFORMS=cpu before jax is imported: the AOT compile must not open a TPU "
                           "backend (libtpu would probe for hardware)")
    kw = {"chip_config_name": "megacore"} if topo.chip.cores_per_chip == 2 else {}
    return list(topologies.get_topology_desc(topology_name=topo.name, platform="tpu", **kw).devices)
