"""PNG plots from a results JSON: speed-up over eager per shape and provider, and
memory saved for backward.

    python -m bench.plots bench/results/<file>.json     # writes <file>-speedup.png, -memory.png
"""
from __future__ import annotations

import json
import pathlib
import sys
from collections import defaultdict


def plot(path: pathlib.Path) -> list:
    from laaf_kernels.experiments.deps import agg_pyplot

    plt = agg_pyplot()
    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if not r.get("error")]
    meta = data["meta"]
    written = []
    for metric, ylabel, suffix in (("speedup_vs_eager", "speed-up over eager (x)", "speedup"),
                                   ("saved_bytes", "saved for backward (MiB)", "memory")):
        series = defaultdict(dict)
        for r in rows:
            if r.get(metric) is None or r["provider"] == "mm":
                continue
            if metric == "saved_bytes" and r["pass"] != "train_fwd":
                continue
            if metric == "speedup_vs_eager" and r["pass"] not in ("infer", "fwd_bwd"):
                continue
            shape = f"{r['M']}x{r['K']}x{r['N']}" if r["op"] == "linear" else f"{r['M']}x{r['N']}"
            key = f"{r['op']} {r['pass']} {shape} {r['dtype']} {r['activation']} {r['slope']}"
            value = r[metric] / 2 ** 20 if metric == "saved_bytes" else r[metric]
            series[r["provider"]][key] = value
        if not series:
            continue
        labels = sorted({k for s in series.values() for k in s})
        fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(labels) * len(series) / 2), 5))
        width = 0.8 / len(series)
        for i, (provider, values) in enumerate(sorted(series.items())):
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [values.get(lbl, 0) for lbl in labels], width, label=provider)
        if metric == "speedup_vs_eager":
            ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{meta['device']}, torch {meta['torch']}, {meta['date'][:10]}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = path.with_name(f"{path.stem}-{suffix}.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for out in plot(pathlib.Path(arg)):
            print(f"wrote {out}")
