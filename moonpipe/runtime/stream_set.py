"""Which streams an engine gets: CUDA streams on a GPU; on CPU a compute worker (thread or
process) that also does the uploads (a host->host copy has nothing to overlap with; a
third thread only adds GIL traffic), and a copy thread."""

from __future__ import annotations

from typing import Any

import torch

from moonpipe.runtime.cpu_stream import CpuStream
from moonpipe.runtime.cuda_stream import CudaStream
from moonpipe.runtime.device_process import ProcessStream
from moonpipe.runtime.streams import Stream, StreamSet

__all__ = ["make_streams"]


def make_streams(device: torch.device, target: Any, compute_threads: int = 1,
                 cpu_worker: str = "thread") -> StreamSet:
    """The streams of one engine; every stream calls methods of ``target`` (its DeviceWork)."""
    if device.type == "cuda":
        streams = StreamSet(compute=CudaStream(device), copy=CudaStream(device), upload=CudaStream(device))
    elif cpu_worker == "process":
        process = ProcessStream(target, num_threads=compute_threads)
        streams = StreamSet(compute=process, copy=CpuStream("copy", cpus=process.host_cpus), upload=process,
                            host_cpus=process.host_cpus)
    else:
        compute: Stream = CpuStream("compute", num_threads=compute_threads)
        streams = StreamSet(compute=compute, copy=CpuStream("copy"), upload=compute)
    for stream in streams.distinct():
        stream.target = target
    return streams
