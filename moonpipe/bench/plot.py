"""Plots for benchmark JSON documents (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_pipeline"]


def plot_pipeline(doc: dict[str, Any], out: Path) -> Path:
    """Period (blocking vs pipelined, with forward + sampling) and speedup vs streams."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    streams = [r["streams"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(streams, [r["blocking_ms"] for r in rows], "o-", label="blocking period (depth 1)")
    ax1.plot(streams, [r["period_ms"] for r in rows], "o-", label="pipelined period (depth 2)")
    ax1.plot(streams, [r["forward_ms"] + r["sampling_ms"] for r in rows], "k--", label="forward + sampling")
    ax1.set_xlabel("concurrent streams")
    ax1.set_ylabel("ms per decode step")
    ax1.set_xscale("log", base=2)
    ax1.legend(fontsize=8)
    ax1.set_title("decode step period")
    ax2.plot(streams, [100 * r["predicted"] for r in rows], "s--", label="predicted (cost model)")
    ax2.plot(streams, [100 * r["observed"] for r in rows], "o-", label="observed (tokens/s)")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xlabel("concurrent streams")
    ax2.set_ylabel("pipelined vs blocking, %")
    ax2.set_xscale("log", base=2)
    ax2.legend(fontsize=8)
    ax2.set_title("speedup")
    worker = f", {doc['cpu_worker']} compute worker" if doc.get("cpu_worker") else ""
    fig.suptitle(f"moonpipe bench pipeline: {doc['model']} ({doc['dtype']}) on {doc['device']}{worker}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
