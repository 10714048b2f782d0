"""Render a device profile's register table as Markdown (simulators/README.md embeds them).

    python -m simulators.profile_doc            # every bundled profile
    python -m simulators.profile_doc psa-plant  # one

The acceptance test checks that the README holds exactly these tables, so the documented
registers are the served ones.
"""

from __future__ import annotations

import sys

from o2base.registers import CANONICAL_ALARMS, Profile, RegType, load_profile, profile_names


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}"


def render_profile_table(profile: Profile) -> str:
    """One Markdown table: as printed in the manual, PDU address, table, type, ... meaning."""
    lines = [
        f"<!-- profile-table {profile.name} -->",
        "| manual | PDU | table | type | order | scale | unit | range | field: meaning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for reg in profile.registers:
        first = reg.address + profile.address_base
        manual = f"{first}" if reg.words == 1 else f"{first}-{first + reg.words - 1}"
        pdu = f"{reg.address}" if reg.words == 1 else f"{reg.address}-{reg.address + 1}"
        order = reg.word_order.value if reg.words == 2 else ""
        kind = reg.type.value if reg.type is not RegType.BITS else f"bit {reg.bit}"
        scale = "" if reg.type is RegType.BOOL else _number(reg.scale)
        span = f"{_number(reg.min)}..{_number(reg.max)}" if reg.min is not None else ""
        inverted = " (active low)" if reg.invert else ""
        lines.append(
            f"| {manual} | {pdu} | {reg.table.value} | {kind} | {order} | {scale} | {reg.unit} "
            f"| {span} | `{reg.name}`: {reg.description}{inverted} |"
        )
    if profile.alarm_bits:
        lines += [
            "",
            "| alarm field (0/1) | row | bit | active | meaning |",
            "|---|---|---|---|---|",
        ]
        for ab in profile.alarm_bits:
            lines.append(
                f"| `{ab.name}` | `{ab.register}` | {ab.bit} | "
                f"{'high' if ab.active_high else 'low'} | "
                f"{ab.description or CANONICAL_ALARMS[ab.name]} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    for name in argv or profile_names():
        profile = load_profile(name)
        print(f"### Profile `{profile.name}`\n{profile.description}. ")
        print(f"`address_base = {profile.address_base}`.\n")
        print(render_profile_table(profile))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
