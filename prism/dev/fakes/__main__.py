"""`python -m prism.dev.fakes [--runpod-port P --lambda-port Q] [--hub-port H]`: fake RunPod
and Lambda Cloud (`prism dev up --fake-clouds`) and a fake Hugging Face Hub (`--fake-hub`)
holding the bundled model as hf://prism/tiny-regressor and a tiny real embedding model
(prism.dev.tiny_embedder) as hf://sentence-transformers/paraphrase-MiniLM-L3-v2, the product's
`framework: "auto"` example, until SIGTERM."""

import argparse
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

from prism.dev.fakes.hf_hub import FakeHfHub
from prism.dev.fakes.lambda_catalog import priced_instance_types
from prism.dev.fakes.lambda_cloud import FakeLambdaCloud
from prism.dev.fakes.runpod import FakeRunPod, priced_gpu_types
from prism.dev.tiny_embedder import tiny_embedder_files

RUNPOD_KEY, LAMBDA_KEY = "rp_local_fake_key", "lambda_local_fake_key"
DEMO_REPO = "prism/tiny-regressor"
EMBEDDING_REPO = "sentence-transformers/paraphrase-MiniLM-L3-v2"  # a stand-in of that name
DEMO_MODEL = Path(__file__).resolve().parents[3] / "examples" / "models" / "tiny-regressor"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runpod-port", type=int, help="with --lambda-port: the fake clouds")
    parser.add_argument("--lambda-port", type=int)
    parser.add_argument("--hub-port", type=int, help="the fake Hugging Face Hub")
    parser.add_argument("--boot-seconds", type=float, default=3.0)
    parser.add_argument(
        "--price-per-hour", type=float, help="every GPU at this price (for budget demos)"
    )
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ExitStack() as running:
        if args.runpod_port and args.lambda_port:
            runpod, lam = _clouds(args)
            running.enter_context(runpod), running.enter_context(lam)
            print(f"fake RunPod {runpod.url}, fake Lambda Cloud {lam.url}", flush=True)
        if args.hub_port:
            hub = running.enter_context(FakeHfHub(port=args.hub_port))
            hub.add_commit(DEMO_REPO, _demo_files(), tags=("v1",))
            hub.add_commit(EMBEDDING_REPO, tiny_embedder_files())
            print(
                f"fake Hugging Face Hub {hub.url} with hf://{DEMO_REPO}, hf://{EMBEDDING_REPO}",
                flush=True,
            )
        stop.wait()


def _clouds(args) -> tuple[FakeRunPod, FakeLambdaCloud]:
    runpod = FakeRunPod(
        api_key=RUNPOD_KEY,
        boot_seconds=args.boot_seconds,
        port=args.runpod_port,
        gpu_types=priced_gpu_types(args.price_per_hour),
    )
    lam = FakeLambdaCloud(
        api_key=LAMBDA_KEY,
        boot_seconds=args.boot_seconds,
        port=args.lambda_port,
        instance_types=priced_instance_types(args.price_per_hour),
    )
    return runpod, lam


def _demo_files() -> dict[str, Path]:
    return {p.name: p for p in sorted(DEMO_MODEL.iterdir()) if p.is_file()}


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
