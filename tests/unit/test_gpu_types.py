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
    # Lambda Cloud instance types
    ("gpu_1x_a100_sxm4", GpuType("A100", None, "SXM")),
    ("gpu_8x_a100_80gb_sxm4", GpuType("A100", 80, "SXM")),
    ("gpu_1x_a10", GpuType("A10")),
    ("gpu_8x_h100_sxm5", GpuType("H100", None, "SXM")),
    ("gpu_1x_a6000", GpuType("RTXA6000")),
    # what users type
    ("A100", GpuType("A100")),
    ("A100-80GB", GpuType("A100", 80)),
    ("a100 80gb", GpuType("A100", 80)),
    ("H100-SXM", GpuType("H100", None, "SXM")),
    ("RTX4090", GpuType("RTX4090")),
    ("4090", GpuType("RTX4090")),
]


@pytest.mark.parametrize(("name", "expected"), NAMES)
def test_each_real_name_parses_to_its_family_memory_and_form(name, expected):
    assert parse(name) == expected


def test_memory_comes_from_nvml_where_the_name_does_not_say_it():
    assert parse("NVIDIA H100 PCIe", memory_mb=81559) == GpuType("H100", 80, "PCIE")
    assert parse("NVIDIA A10", memory_mb=23028) == GpuType("A10", 24)


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
    ],
)
def test_a_request_matches_its_family_and_what_it_names(wanted, gpu, memory_mb, expected):
    assert matches(gpu, wanted, memory_mb) is expected
