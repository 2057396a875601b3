"""Weight pulls over loopback, ours beside the plain tool, side by side in one run.

  https://  node_agent fetch      vs  curl -o                         (same FileServer URL)
  r2://     node_agent fetch      vs  boto3 download_file             (same moto S3 server)
  hf://     node_agent fetch      vs  huggingface_hub.snapshot_download (same fake Hub)
  cache hit node_agent fetch of weights already in the node cache: bytes transferred and time
  peak RSS  of the process running node_agent's fetch (the agent's pull code path)

Every pull runs in a fresh child process that times only the transfer (imports excluded) and
reports its peak RSS; rounds alternate ours/plain so both see the same machine noise. Files land
in /dev/shm by default: disk writeback stalls (seconds, at random) otherwise decide the figure.
r2 uses 256 MiB by default: moto's S3 needs minutes of CPU to take in a 1 GiB object. Goals:
>= 0.9x curl, >= 1.0x boto3 and snapshot_download, cache hit 0 bytes and < 50 ms, peak RSS < 200 MB.

    .venv/bin/python benchmarks/pull.py [--size-mib 1024] [--r2-size-mib 256] [--rounds 5]
"""

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 1024 * 1024
BUCKET, KEY, REPO_ID = "bench-weights", "models/big/model.bin", "bench/big"


# -- the child: one pull, timed, with its peak RSS ------------------------------------------------


def child(kind: str, args: dict) -> None:
    run = CHILD_PULLS[kind](args)  # imports happen here, outside the timing
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """VmHWM: this process's own high-water mark (ru_maxrss would carry over the parent's
    from before exec, and the parent holds moto's copy of the object)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ours(args: dict):
    from node_agent.weights import WeightsCache, fetch, hf, https, r2  # noqa: F401 - imported once

    cache = WeightsCache(Path(args["cache"]), max_bytes=1 << 40)
    return lambda: fetch(args["uri"], cache, lambda done, total: None, env=args.get("env", {}))


def _boto3(args: dict):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=args["endpoint"],
        region_name="auto",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    return lambda: s3.download_file(BUCKET, KEY, str(Path(args["dest"]) / "model.bin"))


def _snapshot(args: dict):
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    return lambda: snapshot_download(
        REPO_ID,
        local_dir=args["dest"],
        cache_dir=Path(args["dest"]) / ".hub",
        endpoint=args["endpoint"],
        token=False,
    )


CHILD_PULLS = {"ours": _ours, "boto3": _boto3, "snapshot": _snapshot}


def run_child(kind: str, args: dict) -> dict:
    env = os.environ | {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": args.get("hf_home", "")}
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} pull failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_curl(url: str, dest: Path) -> dict:
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", str(dest), url], check=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mb": None}


# -- the parent: servers, rounds, figures -------------------------------------------------------


def make_weights(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as out:
        for _ in range(size // MiB):
            out.write(block)


def fresh(work: Path, name: str) -> Path:
    path = work / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def compare(label, ours_fn, plain_fn, plain_name, rounds, size, goal, work) -> dict:
    ours, plain, peaks = [], [], []
    for _ in range(rounds):
        result = ours_fn()
        ours.append(result["seconds"])
        peaks.append(result["peak_rss_mb"])
        plain.append(plain_fn()["seconds"])
        shutil.rmtree(work / "out", ignore_errors=True)
    ours_s, plain_s = statistics.median(ours), statistics.median(plain)
    ratio = plain_s / ours_s  # our speed as a multiple of the plain tool's
    mb = size / 1e6
    verdict = "met" if ratio >= goal else "NOT met"
    print(
        f"{label:6} ours {ours_s:6.2f} s ({mb / ours_s:6.0f} MB/s)   {plain_name} {plain_s:6.2f} s "
        f"({mb / plain_s:6.0f} MB/s)   speed ratio {ratio:.2f}x (goal >= {goal}x: {verdict})   "
        f"peak RSS {max(peaks):.0f} MB"
    )
    return {"ratio": ratio, "peak": max(peaks)}


def bench_https(work: Path, weights: Path, size: int, rounds: int) -> dict:
    from tests.fakes.file_server import FileServer

    with FileServer() as server:
        url = server.add("/model.bin", weights)

        def ours():
            return run_child("ours", {"uri": url, "cache": str(fresh(work, "out") / "cache")})

        def curl():
            return run_curl(url, fresh(work, "out") / "model.bin")

        result = compare("https", ours, curl, "curl", rounds, size, 0.9, work)
        result["hit"] = cache_hit("https", work, url, {}, lambda: server.bytes_served)
    return result


def bench_r2(work: Path, weights: Path, size: int, rounds: int) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.e2e.conftest import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per ranged GET otherwise
    _count_s3_gets()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(weights), BUCKET, KEY)
        env = {"R2_ENDPOINT_URL": endpoint, "R2_ACCESS_KEY_ID": "b", "R2_SECRET_ACCESS_KEY": "b"}
        uri = f"r2://{BUCKET}/{KEY}"

        def ours():
            cache = str(fresh(work, "out") / "cache")
            return run_child("ours", {"uri": uri, "cache": cache, "env": env})

        def plain():
            return run_child("boto3", {"endpoint": endpoint, "dest": str(fresh(work, "out"))})

        result = compare("r2", ours, plain, "boto3", rounds, size, 1.0, work)
        result["hit"] = cache_hit("r2", work, uri, env, lambda: _s3_bytes_sent(server))
        return result
    finally:
        server.stop()


def bench_hf(work: Path, weights: Path, size: int, rounds: int) -> dict:
    from prism.dev.fakes.hf_hub import FakeHfHub

    with FakeHfHub() as hub:
        hub.add_commit(REPO_ID, {"model.safetensors": weights, "config.json": b"{}"})
        env = {"HF_ENDPOINT": hub.url}
        home = str(work / "hf_home")

        def ours():
            cache = str(fresh(work, "out") / "cache")
            args = {"uri": f"hf://{REPO_ID}", "cache": cache, "env": env, "hf_home": home}
            return run_child("ours", args)

        def plain():
            dest = str(fresh(work, "out") / "snapshot")
            return run_child("snapshot", {"endpoint": hub.url, "dest": dest, "hf_home": home})

        result = compare("hf", ours, plain, "snapshot_download", rounds, size, 1.0, work)
        result["hit"] = cache_hit("hf", work, f"hf://{REPO_ID}", env, lambda: hub.bytes_served)
        return result


def _s3_bytes_sent(server) -> int:
    """moto keeps no byte counter: count GetObject calls instead (0 means 0 bytes)."""
    return S3_GETS[0]


S3_GETS = [0]


def _count_s3_gets() -> None:
    from moto.s3.responses import S3Response

    original = S3Response.get_object

    def counted(self, *args, **kwargs):
        S3_GETS[0] += 1
        return original(self, *args, **kwargs)

    S3Response.get_object = counted


def cache_hit(label: str, work: Path, uri: str, env: dict, served) -> dict:
    """A second pull of weights already in the node's cache, in one agent-like process."""
    from node_agent.weights import WeightsCache, fetch

    cache = WeightsCache(fresh(work, "hitcache"), max_bytes=1 << 40)
    fetch(uri, cache, lambda done, total: None, env=env)
    times, before = [], served()
    for _ in range(10):
        started = time.perf_counter()
        pulled = fetch(uri, cache, lambda done, total: None, env=env)
        times.append(time.perf_counter() - started)
        assert pulled.cache_hit
    transferred = served() - before
    unit = "object GETs" if label == "r2" else "bytes"
    median_ms = statistics.median(times) * 1000
    verdict = "met" if transferred == 0 and median_ms < 50 else "NOT met"
    print(
        f"cache hit ({label}, 10 pulls): {transferred} {unit} transferred, median "
        f"{median_ms:.1f} ms, max {max(times) * 1000:.1f} ms (goal 0 bytes, < 50 ms: {verdict})"
    )
    shutil.rmtree(work / "hitcache", ignore_errors=True)
    return {"bytes": transferred, "ms": median_ms}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument(
        "--r2-size-mib",
        type=int,
        default=256,
        help="moto's S3 needs minutes to take in a 1 GiB object, so r2 uses less by default",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="https,r2,hf")
    parser.add_argument(
        "--work-dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where files land (RAM by default, so disk writeback noise does not decide)",
    )
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="prism-pull-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        weights = work / "weights.bin"
        make_weights(weights, size)
        print(f"{args.size_mib} MiB over loopback into {work}, {args.rounds} rounds, medians\n")
        peaks = []
        benches = {"https": bench_https, "r2": bench_r2, "hf": bench_hf}
        for name in args.only.split(","):
            if name == "r2" and args.r2_size_mib != args.size_mib:
                small = work / "r2-weights.bin"
                make_weights(small, args.r2_size_mib * MiB)
                print(f"(r2: {args.r2_size_mib} MiB)")
                peaks.append(bench_r2(work, small, args.r2_size_mib * MiB, args.rounds)["peak"])
                small.unlink()
                continue
            peaks.append(benches[name](work, weights, size, args.rounds)["peak"])
        verdict = "met" if max(peaks) < 200 else "NOT met"
        print(f"\npeak RSS of the pulling process: {max(peaks):.0f} MB (goal < 200 MB: {verdict})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], json.loads(sys.argv[3]))
    else:
        main()
