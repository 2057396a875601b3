"""One GPU vocabulary for what a user asks for (`A100`, `A100-80GB`, `a100 80gb`, `H100-SXM`,
`RTX4090`), what NVML names a card ("NVIDIA A100-SXM4-80GB") and what providers call their
types ("NVIDIA GeForce RTX 4090", "gpu_1x_a100_sxm4", "A100 (40 GB SXM4)"): a family, and the
memory and form factor where a name says them. A request matches a GPU of the same family, and
of the same memory and form factor only where the request names them (`A100` is any A100, never
an A10; `L40` is never an L40S; `RTX A6000` is never an RTX 6000 Ada).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Most specific first; matched on the upper-cased name with the vendor's words and every
# character that is not a letter or a digit removed ("NVIDIA GeForce RTX 4090" -> "RTX4090").
FAMILIES: tuple[tuple[str, str], ...] = (
    ("GH200", r"GH200"),
    ("H200", r"H200"),
    ("H100", r"H100"),
    ("A100", r"A100"),
    ("A10G", r"A10G"),
    ("A10", r"A10(?![0-9G])"),
    ("A40", r"(?<![0-9])A40(?![0-9])"),
    ("A30", r"(?<![0-9])A30(?![0-9])"),
    ("A16", r"(?<![0-9])A16(?![0-9])"),
    ("L40S", r"L40S"),
    ("L40", r"L40(?![0-9S])"),
    ("L4", r"L4(?![0-9])"),
    ("RTX6000ADA", r"6000ADA"),
    ("RTXA6000", r"A6000"),
    ("RTX6000", r"RTX6000"),  # the Quadro RTX 6000 (Lambda's gpu_1x_rtx6000): no A, no Ada
    ("RTXA5000", r"A5000"),
    ("RTXA4000", r"A4000"),
    ("RTX5090", r"5090"),
    ("RTX4090", r"4090"),
    ("RTX3090", r"3090"),
    ("V100", r"V100"),
    ("T4", r"(?<![A-Z0-9])T4(?![0-9])"),
)
# Words that name no GPU: the vendor's, and Lambda's GPU count ("gpu_8x_...", "8x A100 (...)").
_VENDOR_WORDS = re.compile(r"\b(NVIDIA|GEFORCE|TESLA|GENERATION|GPU|\d+X)\b")
_MEMORY = re.compile(r"(?<![0-9])(\d{2,3})\s*GI?B\b")
_FORMS = (("SXM", r"SXM"), ("NVL", r"NVL"), ("PCIE", r"PCIE"))


@dataclass(frozen=True)
class GpuType:
    family: str
    memory_gb: int | None = None
    form: str | None = None  # SXM, PCIE or NVL


def parse(name: str, memory_mb: int | None = None, aliases: Iterable[str] = ()) -> GpuType | None:
    """The GPU type a name stands for (None: no family we know). `memory_mb` (NVML's, or a
    provider's size in MB) gives the memory where no name says it; `aliases`, the other names a
    provider gives the same type (a display name, a description), what `name` leaves out."""
    named = [t for t in map(_parse_name, (name, *aliases)) if t is not None]
    if not named:
        return None
    family = named[0].family
    same = [t for t in named if t.family == family]  # a stray alias does not lend its memory
    memory = next((t.memory_gb for t in same if t.memory_gb), None) or _standard_gb(memory_mb)
    form = next((t.form for t in same if t.form), None)
    return GpuType(family, memory, form)


def _parse_name(name: str) -> GpuType | None:
    upper = name.upper().replace("_", " ")
    found = _MEMORY.search(upper)
    # The memory goes before squashing: "A10 (24 GB)" would read "A1024" and no family.
    words = _VENDOR_WORDS.sub("", _MEMORY.sub(" ", upper))
    squashed = re.sub(r"[^A-Z0-9]", "", words)
    family = next((f for f, pattern in FAMILIES if re.search(pattern, squashed)), None)
    if family is None:
        return None
    form = next((f for f, pattern in _FORMS if re.search(pattern, squashed)), None)
    if family == "H100" and form is None and "HBM3" in squashed:
        form = "SXM"  # NVML names the SXM5 card "NVIDIA H100 80GB HBM3"
    return GpuType(family, int(found.group(1)) if found else None, form)


def matches(
    gpu_name: str, wanted: str | None, memory_mb: int | None = None, aliases: Iterable[str] = ()
) -> bool:
    """Whether a GPU called `gpu_name` (or `aliases`) serves a request for `wanted` (none
    wanted: any GPU)."""
    if not wanted:
        return True
    asked, have = parse(wanted), parse(gpu_name, memory_mb, aliases)
    if asked is None or have is None:  # a name we do not know: only the same name matches
        return any(_squash(wanted) == _squash(name) for name in (gpu_name, *aliases))
    return (
        asked.family == have.family
        and _agrees(asked.memory_gb, have.memory_gb)
        and _agrees(asked.form, have.form)
    )


def _agrees(asked, have) -> bool:
    """What the request names must hold where the GPU's name tells; unknown is no refusal."""
    return asked is None or have is None or asked == have


def _standard_gb(memory_mb: int | None) -> int | None:
    """NVML's total memory (a little under the marketed size) as the marketed GB."""
    if not memory_mb:
        return None
    memory_mb = int(memory_mb)
    sizes = (16, 20, 24, 32, 40, 48, 80, 94, 96, 141, 192)
    return min(sizes, key=lambda size: abs(size * 1024 - memory_mb))


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())
