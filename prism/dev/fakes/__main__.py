"""`python -m prism.dev.fakes --runpod-port P --lambda-port Q`: fake RunPod and Lambda Cloud
for the local platform (`prism dev up --fake-clouds`), until SIGTERM."""

import argparse
import signal
import threading

from prism.dev.fakes.lambda_cloud import FakeLambdaCloud, default_instance_types
from prism.dev.fakes.runpod import DEFAULT_GPU_TYPES, FakeRunPod

RUNPOD_KEY, LAMBDA_KEY = "rp_local_fake_key", "lambda_local_fake_key"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runpod-port", type=int, required=True)
    parser.add_argument("--lambda-port", type=int, required=True)
    parser.add_argument("--boot-seconds", type=float, default=3.0)
    parser.add_argument(
        "--price-per-hour", type=float, help="every GPU at this price (for budget demos)"
    )
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runpod = FakeRunPod(
        api_key=RUNPOD_KEY,
        boot_seconds=args.boot_seconds,
        port=args.runpod_port,
        gpu_types=_priced_gpu_types(args.price_per_hour),
    )
    lam = FakeLambdaCloud(
        api_key=LAMBDA_KEY,
        boot_seconds=args.boot_seconds,
        port=args.lambda_port,
        instance_types=_priced_instance_types(args.price_per_hour),
    )
    with runpod, lam:
        print(f"fake RunPod {runpod.url}, fake Lambda Cloud {lam.url}", flush=True)
        stop.wait()


def _priced_gpu_types(price: float | None) -> list[dict] | None:
    if price is None:
        return None
    return [t | {"securePrice": price, "communityPrice": price} for t in DEFAULT_GPU_TYPES]


def _priced_instance_types(price: float | None) -> dict | None:
    if price is None:
        return None
    types = default_instance_types()
    for entry in types.values():
        entry["instance_type"]["price_cents_per_hour"] = round(price * 100)
    return types


def local_env(host: str, runpod_port: int, lambda_port: int) -> dict[str, str]:
    """What the control plane needs to use the fakes (keys are the fakes' own)."""
    runpod, lam = f"http://{host}:{runpod_port}", f"http://{host}:{lambda_port}"
    return {
        "RUNPOD_API_KEY": RUNPOD_KEY,
        "PRISM_RUNPOD_API_URL": f"{runpod}/graphql",
        "PRISM_RUNPOD_ENDPOINT_TEMPLATE": f"{runpod}/proxy/{{id}}-{{port}}",
        "LAMBDA_API_KEY": LAMBDA_KEY,
        "PRISM_LAMBDA_API_URL": f"{lam}/api/v1",
        "PRISM_LAMBDA_ENDPOINT_TEMPLATE": f"{lam}/vm/{{id}}/{{port}}",
    }


if __name__ == "__main__":
    main()
