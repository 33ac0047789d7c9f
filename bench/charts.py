"""SVG charts of bench.py's figures against the limits measured in the same
run (`bench.py --charts DIR`; `make bench` writes them to docs/img/bench).

matplotlib (Debian's python3-matplotlib, installed by `make bench`, not by
`make check`): the bench is Python already and these are ordinary bar
charts; the CLI's cairo code (tools/plot.c) draws one migration's timeline,
a different picture.  The SVGs are reproducible: no date in the metadata,
fixed element ids, text kept as text.
"""

import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({
    "svg.hashsalt": "livemig-bench",
    "svg.fonttype": "none",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
})

C_BAR, C_REF, C_TARGET, C_LIMIT = "#1f77b4", "#aec7e8", "#d62728", "#333333"


def _save(fig, outdir, name, written):
    path = os.path.join(outdir, name)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    written.append(path)


def _ms(v):
    return "%.0f ms" % v if v >= 10 else "%.1f ms" % v if v >= 1 else "%.2f ms" % v


def _legend_below(ax, n):
    """Under the figure (below the x label), where it hides no bar."""
    fig = ax.figure
    fig.subplots_adjust(bottom=0.24 if n < 5 else 0.15)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", bbox_to_anchor=(0.5, 0.0),
               ncol=3, frameon=False, fontsize=9)


def _title(ax, what, sub):
    ax.set_title("%s\n%s" % (what, sub["when"]), fontsize=11)


def _rate(bps):
    return "%.2f GB/s" % (bps / 1e9)


def _hbars(ax, labels, values, notes, targets=None, color=C_BAR):
    """Horizontal bars top-down, each with a note past its end (and past its
    target mark, red, when it has one)."""
    ys = list(range(len(labels)))[::-1]
    targets = targets or [None] * len(labels)
    ax.barh(ys, [v or 0 for v in values], color=color, height=0.6)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels)
    for y, v, n, t in zip(ys, values, notes, targets):
        ax.annotate(n, (max(v or 0, t or 0), y), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.85})
    tx = [(y, t) for y, t in zip(ys, targets) if t]
    if tx:
        ax.scatter([t for _, t in tx], [y for y, _ in tx], marker="|", s=400, color=C_TARGET,
                   zorder=3, label="target")
    return ys


def throughput(fig_, outdir, sub, written):
    """Throughput figures as a fraction of the link limit they are judged by."""
    rows = []  # label, ratio, note, target
    tcp = fig_.get("tcp-limit-Bps")
    if fig_.get("random-idle-transferred-ratio") is not None:
        rows.append(("%s random idle: transferred / total-time" % sub["big"],
                     fig_["random-idle-transferred-ratio"],
                     "%s of %s raw TCP" % (_rate(fig_["random-idle-transferred-Bps"]),
                                           _rate(tcp)), sub["t_throughput"]))
        rows.append(("%s random idle: guest RAM / total-time" % sub["big"],
                     fig_["random-idle-ram-ratio"],
                     "%s of %s" % (_rate(fig_["random-idle-ram-Bps"]), _rate(tcp)), None))
    if fig_.get("cold-transferred-ratio") is not None:
        rows.append(("%s random idle, cold destination" % sub["big"],
                     fig_["cold-transferred-ratio"],
                     "%s of %s" % (_rate(fig_["cold-transferred-Bps"]), _rate(tcp)), None))
    if fig_.get("mfd-ratio") is not None:
        rows.append(("%s random idle, multifd 2 channels" % sub["big"], fig_["mfd-ratio"],
                     "%s of %s raw TCP, 2 connections" % (_rate(fig_["mfd-transferred-Bps"]),
                                                         _rate(fig_["tcp2-limit-Bps"])),
                     sub["t_mfd"]))
    for b in ("anon", "memfd"):
        r = fig_.get("postcopy-hot-%s-total-ratio" % b)
        if r:
            rows.append(("%s hot, postcopy+preempt (%s): guest RAM / total-time" %
                         (sub["pc_size"], b), 1.0 / r,
                         "%.2f s for %s; the link beside a hot workload allows %.2f s" %
                         (fig_["postcopy-hot-%s-total-ms" % b] / 1000.0, sub["pc_size"],
                          fig_["postcopy-hot-ideal-s"]),
                         1.0 / sub["t_pc_hot_total"]))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.6))
    _hbars(ax, [r[0] for r in rows], [r[1] for r in rows],
           ["%.2f: %s" % (r[1], r[2]) for r in rows], [r[3] for r in rows])
    ax.axvline(1.0, color=C_LIMIT, linestyle="--", linewidth=1, label="the limit (1.0)")
    ax.set_xlim(0, max(1.15, max(r[1] for r in rows) * 1.1) + 0.9)
    ax.set_xlabel("fraction of the machine's limit measured in the same run")
    _title(ax, "Throughput against the link limit", sub)
    _legend_below(ax, len(rows))
    _save(fig, outdir, "throughput.svg", written)


def downtime(fig_, outdir, sub, written):
    """Downtimes (ms, log scale) beside the limit and targets they answer to."""
    rows = []  # label, ms, note, target ms
    if fig_.get("idle-downtime-ms") is not None:
        rows.append(("%s random idle: downtime" % sub["big"], fig_["idle-downtime-ms"],
                     "expected %s" % _ms(fig_.get("idle-expected-downtime-ms") or 0),
                     sub["t_idle_downtime"]))
        rows.append(("%s random at 100 MB/s: downtime" % sub["dirty_mem"],
                     fig_["dirty-downtime-ms"],
                     "expected %s" % _ms(fig_.get("dirty-expected-downtime-ms") or 0), None))
        if fig_.get("cold-downtime-ms") is not None:
            rows.append(("%s random idle, cold destination" % sub["big"],
                         fig_["cold-downtime-ms"], "", None))
    if fig_.get("mfd-downtime-ms") is not None:
        rows.append(("%s random idle, multifd 2" % sub["big"], fig_["mfd-downtime-ms"], "",
                     None))
    for name, label in (("postcopy-preempt", "random, postcopy+preempt: switch"),
                        ("postcopy", "random, postcopy: switch"),
                        ("postcopy-hot-anon", "hot, postcopy+preempt (anon): switch"),
                        ("postcopy-hot-memfd", "hot, postcopy+preempt (memfd): switch")):
        us = fig_.get(name + "-downtime-us")
        if us is not None:
            rows.append(("%s %s" % (sub["pc_size"], label), us / 1000.0, "",
                         sub["t_pc_downtime"] if name.startswith("postcopy-hot") else None))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.6))
    _hbars(ax, [r[0] for r in rows], [max(r[1], 0.01) for r in rows],
           ["%s%s" % (_ms(r[1]), "; " + r[2] if r[2] else "") for r in rows],
           [r[3] for r in rows])
    if fig_.get("downtime-limit-ms"):
        ax.axvline(fig_["downtime-limit-ms"], color=C_LIMIT, linestyle="--", linewidth=1,
                   label="downtime-limit (%d ms, precopy)" % fig_["downtime-limit-ms"])
    ax.set_xscale("log")
    ax.set_xlim(0.05, 3000)
    ax.set_xlabel("downtime (ms, log scale)")
    _title(ax, "Downtime against the downtime limit and targets", sub)
    _legend_below(ax, len(rows))
    _save(fig, outdir, "downtime.svg", written)


def postcopy_latency(fig_, outdir, sub, written):
    """Remote fault latency p50/p99 (us, log) beside the machine's floor."""
    if fig_.get("floor-p50-us") is None:
        return
    groups = [("floor: uffd + TCP 4K round trip", fig_["floor-p50-us"], fig_["floor-p99-us"])]
    for name, label in (("postcopy-preempt", "random, postcopy+preempt"),
                        ("postcopy", "random, postcopy"),
                        ("postcopy-hot-anon", "hot, preempt, anon"),
                        ("postcopy-hot-memfd", "hot, preempt, memfd")):
        if fig_.get(name + "-p50-us") is not None:
            groups.append((label, fig_[name + "-p50-us"], fig_[name + "-p99-us"]))
    fig, ax = plt.subplots(figsize=(10, 4.2))
    xs = range(len(groups))
    w = 0.38
    b50 = ax.bar([x - w / 2 for x in xs], [g[1] for g in groups], w, color=C_BAR, label="p50")
    b99 = ax.bar([x + w / 2 for x in xs], [g[2] for g in groups], w, color=C_REF, label="p99")
    for bars in (b50, b99):
        for r in bars:
            ax.annotate("%.0f" % r.get_height(), (r.get_x() + r.get_width() / 2, r.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    ax.axhline(sub["t_pc_p50"], color=C_TARGET, linestyle=":", linewidth=1,
               label="target p50 (%d us, postcopy+preempt)" % sub["t_pc_p50"])
    ax.axhline(sub["t_pc_p99"], color=C_TARGET, linestyle="--", linewidth=1,
               label="target p99 (%d us)" % sub["t_pc_p99"])
    ax.set_xticks(list(xs))
    ax.set_xticklabels([textwrap.fill(g[0], 18) for g in groups], fontsize=9)
    ax.set_yscale("log")
    ax.set_ylabel("remote fault latency (us, log scale)")
    _title(ax, "Postcopy remote fault latency, %s guests, against the machine's floor" %
           sub["pc_size"], sub)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    _save(fig, outdir, "postcopy-latency.svg", written)


def compression(fig_, outdir, sub, written):
    methods = [m for m in ("none", "zlib", "zstd", "lz4")
               if fig_.get("comp-%s-total-s" % m) is not None]
    if not methods:
        return
    fig, ax = plt.subplots(figsize=(10, 3.6))
    vals = [fig_["comp-%s-total-s" % m] for m in methods]
    notes = ["%.2f s, %.0f MB on the wire, src %.2f / dst %.2f cpu s per GB" %
             (fig_["comp-%s-total-s" % m], fig_["comp-%s-wire-bytes" % m] / 1e6,
              fig_["comp-%s-src-cpu-s-per-gb" % m], fig_["comp-%s-dst-cpu-s-per-gb" % m])
             for m in methods]
    _hbars(ax, methods, vals, notes)
    none_s = fig_.get("comp-none-total-s")
    if none_s:
        ax.axvline(none_s / sub["t_comp_speedup"], color=C_TARGET, linestyle="--",
                   linewidth=1, label="target for zstd and lz4: %.0fx faster than none" %
                   sub["t_comp_speedup"])
        _legend_below(ax, 4)
    ax.set_xlim(0, max(vals) * 2.1)
    ax.set_xlabel("total time (s), %s of text pages at 125 MB/s (a 1 Gbit/s link)" %
                  sub["comp_mem"])
    _title(ax, "multifd compression", sub)
    _save(fig, outdir, "compression.svg", written)


def write(outdir, fig_, sub):
    """Writes every chart whose figures were measured; returns the paths."""
    os.makedirs(outdir, exist_ok=True)
    written = []
    for chart in (throughput, downtime, postcopy_latency, compression):
        chart(fig_, outdir, sub, written)
    return written
