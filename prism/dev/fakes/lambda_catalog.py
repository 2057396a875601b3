"""What the fake Lambda Cloud (lambda_cloud.py) offers: its regions and instance types, shaped as
GET /api/v1/instance-types answers them, and their prices."""

from decimal import Decimal
from typing import Any

REGIONS = {
    "us-east-1": "Virginia, USA",
    "us-west-1": "California, USA",
    "us-west-2": "Arizona, USA",
    "us-west-3": "Utah, USA",
    "europe-central-1": "Germany",
}


def instance_type_entry(
    name: str,
    gpu_description: str,
    price_cents_per_hour: int,
    regions: list[str],
    *,
    gpus: int = 1,
    vcpus: int = 30,
    memory_gib: int = 200,
    storage_gib: int = 512,
) -> dict[str, Any]:
    """One value of GET /instance-types' `data`, as Lambda shapes it."""
    return {
        "instance_type": {
            "name": name,
            "description": f"{gpus}x {gpu_description}",
            "gpu_description": gpu_description,
            "price_cents_per_hour": price_cents_per_hour,
            "specs": {
                "vcpus": vcpus,
                "memory_gib": memory_gib,
                "storage_gib": storage_gib,
                "gpus": gpus,
            },
        },
        "regions_with_capacity_available": [
            {"name": r, "description": REGIONS.get(r, r)} for r in regions
        ],
    }


def default_instance_types() -> dict[str, dict[str, Any]]:
    entries = [
        instance_type_entry(
            "gpu_1x_a100_sxm4", "A100 (40 GB SXM4)", 129, ["us-east-1", "us-west-1"]
        ),
        instance_type_entry(
            "gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 249, ["us-west-3"], vcpus=26, storage_gib=1024
        ),
        instance_type_entry(
            "gpu_8x_a100_80gb_sxm4",
            "A100 (80 GB SXM4)",
            1432,
            ["us-east-1"],
            gpus=8,
            vcpus=240,
            memory_gib=1800,
            storage_gib=19500,
        ),
        instance_type_entry("gpu_1x_a10", "A10 (24 GB PCIe)", 75, ["us-east-1", "us-west-1"]),
    ]
    return {e["instance_type"]["name"]: e for e in entries}


def priced_instance_types(price: float | None) -> dict | None:
    """Every instance type at one price per hour (None: the default prices)."""
    if price is None:
        return None
    types = default_instance_types()
    for entry in types.values():
        entry["instance_type"]["price_cents_per_hour"] = round(price * 100)
    return types


def price_per_hour(instance_type: dict[str, Any]) -> Decimal:
    return Decimal(instance_type["price_cents_per_hour"]) / 100
