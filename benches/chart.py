#!/usr/bin/env python3
"""Render the echo/HTTP benchmark results as one SVG (plain Python, no packages).

    python3 benches/chart.py [RESULTS_DIR] [OUT.svg] [TITLE]

RESULTS_DIR holds the CSV files `cargo bench --bench echo -- all` writes (echo.csv,
syscalls.csv, http.csv; default: target/echo-bench, or $ECHO_OUT). Missing files leave
their panels out. OUT defaults to docs/benchmarks-echo.svg.
"""

import csv
import os
import statistics
import sys
from xml.sax.saxutils import escape

COLORS = {
    "copas": "#d9480f",
    "copas_read": "#f08c00",
    "polling": "#495057",
    "tokio": "#1c7ed6",
    "may": "#2f9e44",
}
FALLBACK = ["#7048e8", "#c2255c", "#0c8599", "#5c940d"]

PANEL_W, PANEL_H = 330, 250
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 12, 38, 52


def color(server, order):
    if server in COLORS:
        return COLORS[server]
    base = server.split("@")[0]
    if base in COLORS:
        return COLORS[base]
    return FALLBACK[order.index(server) % len(FALLBACK)]


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def nice_max(v):
    """A round axis maximum at or above v."""
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * mag >= v:
            return step * mag
    return 10 * mag


def fmt(v):
    if v >= 10000:
        return f"{v / 1000:.0f}k"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class Svg:
    def __init__(self):
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=11, anchor="start", weight="normal", fill="#212529", rotate=None):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}"{tr}>{escape(s)}</text>'
        )

    def line(self, x1, y1, x2, y2, stroke="#adb5bd", width=1):
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}" stroke-width="{width}"/>'
        )

    def rect(self, x, y, w, h, fill, opacity=1.0, title=None):
        t = f"<title>{escape(title)}</title>" if title else ""
        self.add(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
            f'fill="{fill}" fill-opacity="{opacity}">{t}</rect>'
        )

    def circle(self, x, y, r, fill):
        self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="white" stroke-width="0.6"/>')


def panel(svg, ox, oy, title, ylabel, groups, series, order, stacked_note=None, ref=None):
    """A grouped bar panel.

    groups: list of group labels (x axis).
    series: {server: {group: dict(mid=, lo=, hi=, dots=[...], parts=[(value, opacity, label)])}}
    ref: a value to mark with a horizontal line across the panel (for example 1.0 for ratios).
    """
    x0, y0 = ox + MARGIN_L, oy + MARGIN_T
    w = PANEL_W - MARGIN_L - MARGIN_R
    h = PANEL_H - MARGIN_T - MARGIN_B
    svg.text(ox + PANEL_W / 2, oy + 16, title, size=12.5, anchor="middle", weight="bold")
    if stacked_note:
        svg.text(ox + PANEL_W / 2, oy + 29, stacked_note, size=9.5, anchor="middle", fill="#495057")
    top = 0.0
    for s in series.values():
        for d in s.values():
            top = max(top, d.get("hi", d["mid"]), *(d.get("dots") or [0]))
    top = nice_max(top * 1.05)
    for i in range(6):
        v = top * i / 5
        y = y0 + h - h * i / 5
        svg.line(x0, y, x0 + w, y, stroke="#e9ecef" if i else "#868e96")
        svg.text(x0 - 5, y + 4, fmt(v) if v else "0", size=9.5, anchor="end", fill="#495057")
    svg.text(ox + 13, y0 + h / 2, ylabel, size=10, anchor="middle", fill="#495057", rotate=-90)
    if ref is not None and 0 < ref <= top:
        y = y0 + h - h * ref / top
        svg.line(x0, y, x0 + w, y, stroke="#c92a2a", width=1.2)
        svg.text(x0 + w, y - 3, fmt(ref), size=9, anchor="end", fill="#c92a2a")
    present = [s for s in order if s in series]
    gw = w / max(len(groups), 1)
    bw = min(gw * 0.8 / max(len(present), 1), 26)
    for gi, g in enumerate(groups):
        gx = x0 + gw * gi + (gw - bw * len(present)) / 2
        svg.text(x0 + gw * gi + gw / 2, y0 + h + 15, g, size=10, anchor="middle")
        for si, s in enumerate(present):
            d = series[s].get(g)
            if not d:
                continue
            c = color(s, order)
            bx = gx + bw * si
            scale = h / top
            parts = d.get("parts") or [(d["mid"], 0.9, None)]
            base = 0.0
            for value, opacity, label in parts:
                tip = f"{s} {g}: {label + ' ' if label else ''}{fmt(value)}"
                svg.rect(bx + 1, y0 + h - (base + value) * scale, bw - 2, value * scale, c, opacity, tip)
                base += value
            if "lo" in d and "hi" in d and d["hi"] > d["lo"]:
                cx = bx + bw / 2
                svg.line(cx, y0 + h - d["hi"] * scale, cx, y0 + h - d["lo"] * scale, stroke="#212529")
                svg.line(cx - 3, y0 + h - d["hi"] * scale, cx + 3, y0 + h - d["hi"] * scale, stroke="#212529")
                svg.line(cx - 3, y0 + h - d["lo"] * scale, cx + 3, y0 + h - d["lo"] * scale, stroke="#212529")
            for v in d.get("dots") or []:
                svg.circle(bx + bw / 2, y0 + h - v * scale, 1.8, "#212529")
            label_top = max(base, d.get("hi", base))
            svg.text(bx + bw / 2, y0 + h - label_top * scale - 4, fmt(d["mid"]), size=8,
                     anchor="middle", fill="#343a40")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "ECHO_OUT", os.path.join(root, "target", "echo-bench"))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "docs", "benchmarks-echo.svg")
    title = sys.argv[3] if len(sys.argv) > 3 else None

    echo = read_csv(os.path.join(results, "echo.csv"))
    sysc = read_csv(os.path.join(results, "syscalls.csv"))
    http = read_csv(os.path.join(results, "http.csv"))
    if not (echo or sysc or http):
        sys.exit(f"no echo.csv, syscalls.csv or http.csv in {results}")

    order = []
    for rows in (echo, sysc, http):
        for r in rows:
            if r["server"] not in order:
                order.append(r["server"])

    panels = []
    if echo:
        loads = []
        for r in echo:
            key = (int(r["conns"]), int(r["size"]))
            if key not in loads:
                loads.append(key)
        for conns, size in loads:
            rows = [r for r in echo if int(r["conns"]) == conns and int(r["size"]) == size]
            series = {}
            for s in order:
                v = [float(r["msgs_per_s"]) for r in rows if r["server"] == s]
                if v:
                    series[s] = {"": dict(mid=statistics.median(v), lo=min(v), hi=max(v), dots=v)}
            rounds = max(int(r["round"]) for r in rows)
            panels.append((f"echo msgs/s, C={conns}, S={size} B", "messages per second", [""], series,
                           f"median of {rounds} interleaved rounds, whisker min..max, dots = rounds"))
        groups = [f"C={c}, S={s}" for c, s in loads]
        series = {}
        for s in order:
            for (c, sz), g in zip(loads, groups):
                rows = [r for r in echo if r["server"] == s and int(r["conns"]) == c and int(r["size"]) == sz]
                if not rows:
                    continue
                total = statistics.median(float(r["cpu_us_per_msg"]) for r in rows)
                user = statistics.median(float(r["user_us_per_msg"]) for r in rows)
                series.setdefault(s, {})[g] = dict(
                    mid=total, parts=[(user, 1.0, "user µs/msg"), (max(total - user, 0), 0.45, "kernel µs/msg")])
        panels.append(("server CPU per message", "µs per message", groups, series,
                       "median; dark = user space, light = kernel"))
        series = {}
        for s in order:
            for (c, sz), g in zip(loads, groups):
                v = [float(r["user_us_per_msg"]) for r in echo
                     if r["server"] == s and int(r["conns"]) == c and int(r["size"]) == sz]
                if v:
                    series.setdefault(s, {})[g] = dict(mid=statistics.median(v), lo=min(v), hi=max(v), dots=v)
        panels.append(("user-space CPU per message", "µs per message", groups, series,
                       "the runtime's own work; median, whisker min..max"))
    if sysc:
        loads = []
        for r in sysc:
            key = (int(r["conns"]), int(r["size"]))
            if key not in loads:
                loads.append(key)
        groups = [f"C={c}, S={s}" for c, s in loads]
        series = {}
        for r in sysc:
            g = f"C={r['conns']}, S={r['size']}"
            series.setdefault(r["server"], {})[g] = dict(mid=float(r["total"]))
        panels.append(("system calls per echoed message", "syscalls per message", groups, series,
                       "perf stat raw_syscalls:sys_enter on the server"))
    if http:
        series = {}
        for s in order:
            v = [float(r["req_per_s"]) for r in http if r["server"] == s]
            if v:
                series[s] = {"": dict(mid=statistics.median(v), lo=min(v), hi=max(v), dots=v)}
        rounds = max(int(r["round"]) for r in http)
        panels.append(("HTTP hello world, wrk -t1 -c50", "requests per second", [""], series,
                       f"median of {rounds} interleaved rounds, whisker min..max"))

    cols = 3
    rows_n = (len(panels) + cols - 1) // cols
    legend_h = 34
    title_h = 26 if title else 0
    width, height = PANEL_W * cols, PANEL_H * rows_n + legend_h + title_h
    svg = Svg()
    svg.add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">')
    svg.rect(0, 0, width, height, "white")
    if title:
        svg.text(width / 2, 18, title, size=13, anchor="middle", weight="bold")
    for i, (ptitle, ylabel, groups, series, note) in enumerate(panels):
        panel(svg, PANEL_W * (i % cols), title_h + PANEL_H * (i // cols), ptitle, ylabel, groups, series,
              order, note)
    lx = 20
    ly = title_h + PANEL_H * rows_n + 18
    for s in order:
        svg.rect(lx, ly - 9, 11, 11, color(s, order))
        svg.text(lx + 15, ly, s, size=11)
        lx += 28 + 7.5 * len(s)
    svg.text(width - 10, ly, "server pinned to CPU 0, load to CPU 1; loopback", size=9.5,
             anchor="end", fill="#495057")
    svg.add("</svg>")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(svg.parts) + "\n")
    print(f"wrote {out} ({len(panels)} panels from {results})")


if __name__ == "__main__":
    main()
