"""PNG charts of the report (matplotlib, Agg): cost vs faces, cost vs resolution, models, headline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pixels(label: str) -> int:
    w, h = (int(v) for v in label.split("x"))
    return w * h


def scaling_chart(report: Any, axis: str, out: Path) -> Path | None:
    figs = [s for s in report.scaling if s.axis == axis]
    if not figs:
        return None
    plt = _plt()
    figs = sorted(figs, key=lambda s: int(s.x) if axis == "faces" else _pixels(s.x))
    # Face counts on a true scale (cost should grow linearly); resolutions as ordered categories.
    xs = [int(s.x) for s in figs] if axis == "faces" else list(range(len(figs)))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = list(figs[0].measured)
    for name in names:
        ys = [s.measured[name].frame.p50_ms if name in s.measured else float("nan") for s in figs]
        ax.plot(xs, ys, marker="o", label=f"facelite: {name}")
    base = [s.baseline.frame.p50_ms if s.baseline else float("nan") for s in figs]
    ax.plot(xs, base, marker="s", ls="--", color="k", label=figs[0].baseline_name)
    ax.axhline(40.0, color="grey", lw=0.8, ls=":", label="40 ms = 25 fps")
    ax.set_xticks(xs, [s.x for s in figs])
    ax.set_yscale("log")
    ax.set_xlabel("faces in a 640x480 frame" if axis == "faces" else "frame size (one face)")
    ax.set_ylabel("ms per frame, p50 (one core)")
    ax.set_title(f"Cost vs {'faces in the frame' if axis == 'faces' else 'input resolution'}: detect + align + embed")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = out / f"scaling_{axis}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def models_chart(report: Any, out: Path) -> Path | None:
    """p50 per graph at one thread: each variant in both runtimes beside its float source."""
    rows = [m for m in report.models if m.threads == 1 and not m.measured.error]
    if not rows:
        return None
    plt = _plt()
    labels, litert, legacy, source = [], [], [], []
    seen: set[tuple[str, str, str]] = set()
    for m in rows:
        for g in m.measured.graphs:
            key = (m.model, m.variant, g.graph)
            if key in seen:
                continue
            seen.add(key)

            def p50(runtime: str, model: str = m.model, variant: str = m.variant, graph: str = g.graph) -> float:
                for r in rows:
                    if (r.model, r.variant, r.runtime) == (model, variant, runtime):
                        for gg in r.measured.graphs:
                            if gg.graph == graph:
                                return gg.latency.p50_ms
                return 0.0

            base = next((b.latency.p50_ms for b in m.baseline.graphs if b.graph == g.graph), 0.0)
            labels.append(f"{m.model}/{g.graph} {m.variant}" if g.graph != "model" else f"{m.model} {m.variant}")
            litert.append(p50("ai-edge-litert"))
            legacy.append(p50("tflite-runtime"))
            source.append(base)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.5))
    ys = list(range(len(labels)))
    h = 0.27
    ax.barh([y - h for y in ys], source, h, label="float source (TensorFlow)", color="0.6")
    ax.barh(ys, litert, h, label="ai-edge-litert")
    ax.barh([y + h for y in ys], legacy, h, label="tflite-runtime 2.14")
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per inference, p50, one thread")
    ax.set_title("Models: variants beside their float source")
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path = out / "models_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def headline_chart(report: Any, out: Path) -> Path | None:
    h = report.headline
    if h is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    names = [f"facelite:\n{h.ours}", h.peer.replace(" + ", "\n+ ")]
    vals = [h.ours_frame_ms, h.peer_frame_ms]
    bars = ax.barh(names, vals, color=["tab:blue", "0.5"])
    for bar, ms, auc in zip(bars, vals, (h.ours_auc, h.peer_auc)):
        ax.text(
            bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {ms:.1f} ms, AUC {auc:.5f}", va="center", fontsize=8
        )
    ax.invert_yaxis()
    ax.set_xlim(0, max(vals) * 1.6)
    ax.set_xlabel("ms per 640x480 frame with one face, p50, one core")
    ax.set_title(f"{h.speedup:.1f}x faster per frame")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = out / "headline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(report: Any, out: Path) -> list[Path]:
    paths = [
        scaling_chart(report, "faces", out),
        scaling_chart(report, "resolution", out),
        models_chart(report, out),
        headline_chart(report, out),
    ]
    return [p for p in paths if p is not None]
