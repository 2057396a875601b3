"""One GPU vocabulary, over the real names: NVML's, RunPod's and Lambda Cloud's type ids, and
what users type."""

import pytest

from chalicelib.gpu_types import GpuType, matches, parse

NAMES = [
    # NVML
    ("NVIDIA A100-SXM4-80GB", GpuType("A100", 80, "SXM")),
    ("NVIDIA A100-SXM4-40GB", GpuType("A100", 40, "SXM")),
    ("NVIDIA A100-PCIE-40GB", GpuType("A100", 40, "PCIE")),
    ("NVIDIA A100 80GB PCIe", GpuType("A100", 80, "PCIE")),
    ("NVIDIA H100 80GB HBM3", GpuType("H100", 80, "SXM")),
    ("NVIDIA H100 PCIe", GpuType("H100", None, "PCIE")),
    ("NVIDIA H100 NVL", GpuType("H100", None, "NVL")),
    ("NVIDIA H200", GpuType("H200")),
    ("NVIDIA GH200 480GB", GpuType("GH200", 480)),
    ("NVIDIA L40", GpuType("L40")),
    ("NVIDIA L40S", GpuType("L40S")),
    ("NVIDIA L4", GpuType("L4")),
    ("NVIDIA A10", GpuType("A10")),
    ("NVIDIA A10G", GpuType("A10G")),
    ("NVIDIA A40", GpuType("A40")),
    ("NVIDIA GeForce RTX 4090", GpuType("RTX4090")),
    ("NVIDIA RTX A6000", GpuType("RTXA6000")),
    ("NVIDIA RTX 6000 Ada Generation", GpuType("RTX6000ADA")),
    ("Tesla T4", GpuType("T4")),
    ("Tesla V100-SXM2-16GB", GpuType("V100", 16, "SXM")),
    # RunPod display names (its ids are NVML's names)
    ("H100 SXM", GpuType("H100", None, "SXM")),
    ("H200 SXM", GpuType("H200", None, "SXM")),
    ("RTX 6000 Ada", GpuType("RTX6000ADA")),
    ("RTX A6000", GpuType("RTXA6000")),
    # Lambda Cloud instance types: the "1x"/"8x" count is no memory size
    ("gpu_1x_a100", GpuType("A100")),
    ("gpu_1x_a100_sxm4", GpuType("A100", None, "SXM")),
    ("gpu_8x_a100_80gb_sxm4", GpuType("A100", 80, "SXM")),
    ("gpu_1x_a10", GpuType("A10")),
    ("gpu_1x_h100_pcie", GpuType("H100", None, "PCIE")),
    ("gpu_8x_h100_sxm5", GpuType("H100", None, "SXM")),
    ("gpu_1x_gh200", GpuType("GH200")),
    ("gpu_1x_a6000", GpuType("RTXA6000")),
    ("gpu_1x_rtx6000", GpuType("RTX6000")),  # the Quadro RTX 6000: neither A6000 nor Ada
    # ... and their descriptions
    ("1x A100 (40 GB SXM4)", GpuType("A100", 40, "SXM")),
    ("8x A100 (80 GB SXM4)", GpuType("A100", 80, "SXM")),
    ("NVIDIA A100 SXM4 40GB", GpuType("A100", 40, "SXM")),
    ("A10 (24 GB PCIe)", GpuType("A10", 24, "PCIE")),  # the memory does not run into "A10"
    ("H100 (80 GB SXM5)", GpuType("H100", 80, "SXM")),
    ("GH200 (96 GB)", GpuType("GH200", 96)),
    ("RTX A6000 (48 GB)", GpuType("RTXA6000", 48)),
    ("RTX 6000 (24 GB)", GpuType("RTX6000", 24)),
    # what users type
    ("A100", GpuType("A100")),
    ("A100-80GB", GpuType("A100", 80)),
    ("a100 80gb", GpuType("A100", 80)),
    ("H100-SXM", GpuType("H100", None, "SXM")),
    ("RTX4090", GpuType("RTX4090")),
    ("4090", GpuType("RTX4090")),
    ("RTX 6000", GpuType("RTX6000")),
    ("A10 24GB", GpuType("A10", 24)),
]


@pytest.mark.parametrize(("name", "expected"), NAMES)
def test_each_real_name_parses_to_its_family_memory_and_form(name, expected):
    assert parse(name) == expected


def test_memory_comes_from_nvml_where_the_name_does_not_say_it():
    assert parse("NVIDIA H100 PCIe", memory_mb=81559) == GpuType("H100", 80, "PCIE")
    assert parse("NVIDIA A10", memory_mb=23028) == GpuType("A10", 24)
    assert parse("NVIDIA A100 80GB PCIe", memory_mb=40960) == GpuType("A100", 80, "PCIE")


def test_aliases_fill_in_what_the_name_leaves_out():
    lambda_type = parse("gpu_1x_a100", aliases=["A100 (40 GB PCIe)", "1x A100 (40 GB PCIe)"])
    assert lambda_type == GpuType("A100", 40, "PCIE")
    assert parse("NVIDIA H200", 141 * 1024, ["H200 SXM"]) == GpuType("H200", 141, "SXM")
    # an alias of another family lends nothing
    assert parse("gpu_1x_a10", aliases=["A100 (80 GB SXM4)"]) == GpuType("A10")
    assert parse("AMD Instinct MI300X OAM", aliases=["MI300X"]) is None


@pytest.mark.parametrize(
    ("wanted", "gpu", "memory_mb", "expected"),
    [
        ("A100-80GB", "NVIDIA A100-SXM4-80GB", None, True),  # the product's own example
        ("A100", "NVIDIA A100-PCIE-40GB", None, True),  # any memory of the family
        ("A100-80GB", "NVIDIA A100-PCIE-40GB", None, False),
        ("A10", "NVIDIA A100-SXM4-80GB", None, False),  # never another family
        ("A10", "NVIDIA A10G", None, False),
        ("A10G", "NVIDIA A10G", None, True),
        ("L40", "NVIDIA L40S", None, False),
        ("L40S", "NVIDIA L40S", None, True),
        ("L4", "NVIDIA L40", None, False),
        ("H100-SXM", "NVIDIA H100 80GB HBM3", None, True),
        ("H100-SXM", "NVIDIA H100 PCIe", None, False),
        ("H100", "NVIDIA H100 NVL", None, True),
        ("H100-80GB", "NVIDIA H100 PCIe", 81559, True),
        ("RTX A6000", "NVIDIA RTX 6000 Ada Generation", None, False),
        ("RTX 6000 Ada", "NVIDIA RTX 6000 Ada Generation", None, True),
        ("RTX4090", "NVIDIA GeForce RTX 4090", None, True),
        (None, "NVIDIA A40", None, True),
        ("MI300X", "AMD Instinct MI300X", None, False),  # unknown names: the same name only
        ("Unknown-9", "unknown 9", None, True),
        ("RTX 6000", "NVIDIA RTX 6000 Ada Generation", None, False),
        ("RTX A6000", "gpu_1x_rtx6000", None, False),
        ("A100-80GB", "gpu_1x_a100_sxm4", None, True),  # no memory named: no refusal
        ("H100-SXM", "gpu_1x_h100_pcie", None, False),
        ("H100", "gpu_1x_gh200", None, False),
    ],
)
def test_a_request_matches_its_family_and_what_it_names(wanted, gpu, memory_mb, expected):
    assert matches(gpu, wanted, memory_mb) is expected


@pytest.mark.parametrize(
    ("wanted", "gpu", "aliases", "expected"),
    [
        ("A100-80GB", "gpu_1x_a100_sxm4", ["A100 (40 GB SXM4)"], False),
        ("A100-40GB", "gpu_1x_a100_sxm4", ["A100 (40 GB SXM4)"], True),
        ("A100-PCIE", "gpu_1x_a100", ["A100 (40 GB PCIe)"], True),
        ("MI300X", "AMD Instinct MI300X OAM", ["MI300X"], True),  # an alias's very name
        ("MI300X", "AMD Instinct MI300X OAM", [""], False),
    ],
)
def test_aliases_name_the_same_gpu(wanted, gpu, aliases, expected):
    assert matches(gpu, wanted, aliases=aliases) is expected
