"""Names in the transfer map's run folder: packs, and the score store's labels for each model scored."""

from __future__ import annotations

from lora_merge.study.map_config import MapEntry


def pack_name(skill: str, n: int, entry: MapEntry, seed: int) -> str:
    kind = "full" if entry.mode == "full" else f"r{entry.rank}"
    return f"{skill}-{n}-{kind}-s{seed}"


def theta_label(g: str) -> str:
    return f"θG {g}"


def tau_alone_label(pack: str) -> str:
    return f"θpre + τ · {pack}"


def point_prefix(g: str, pack: str) -> str:
    """What every scored ω of one (θG, pack) starts with; the ω follows it."""
    return f"{g} · {pack} · ω="


def point_label(g: str, pack: str, omega: float) -> str:
    """Rounded like :func:`lora_merge.study.transfer_map.coarse_omegas`, so the sweep's own |D|/|G| point is the stored one."""
    return f"{point_prefix(g, pack)}{round(omega, 4):g}"


def replay_label(g: str, skill: str, n: int) -> str:
    return f"CFT + replay · {g} · {skill}-{n}"
