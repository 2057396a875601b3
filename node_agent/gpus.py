"""GPU inventory through NVML (nvidia-ml-py): an empty list where there is no GPU, never a crash."""

import contextlib

from chalicelib.protocol import GpuInfo, gpu_matches


def inventory() -> list[GpuInfo]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library, no device: a CPU-only node
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else name,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                    memory_total_mb=int(memory.total // (1024 * 1024)),
                )
            )
        return gpus
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def free_indices(gpus: list[GpuInfo], in_use: set[int], wanted_type: str | None) -> list[int]:
    return [
        g.index
        for g in gpus
        if g.index not in in_use and gpu_matches(g.name, wanted_type, g.memory_total_mb)
    ]


if __name__ == "__main__":  # `python -m node_agent.gpus`: what the agent would report
    for gpu in inventory():
        print(gpu.model_dump_json())
