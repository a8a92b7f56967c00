#!/usr/bin/env python3
"""Draws scripts/soak.sh's samples as an SVG: four panels over time (resident memory, open
descriptors, CPU share, p99 publish-to-write latency), standard library only.

Usage: scripts/soak-plot.py samples.tsv out.svg
"""
import sys

W, H, PAD, GAP = 720, 150, 48, 24
PANELS = [
    ("rss_kib", "RSS (MiB)", lambda v: v / 1024.0),
    ("fds", "open descriptors", float),
    ("cpu_pct", "CPU (% of one core)", float),
    ("p99_ms", "p99 publish to write (ms)", float),
]


def read(path):
    lines = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    head, rows = lines[0], lines[1:]
    cols = {name: i for i, name in enumerate(head)}
    t0 = int(rows[0][cols["time"]]) if rows else 0
    return cols, rows, t0


def panel(out, top, title, points, t_max):
    xs = lambda t: PAD + (W - 2 * PAD) * (t / t_max if t_max else 0)
    values = [v for _, v in points]
    v_max = max(values) * 1.1 if values and max(values) > 0 else 1.0
    ys = lambda v: top + H - (H * v / v_max)
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>'
               % (PAD, top, W - 2 * PAD, H))
    out.append('<text x="%d" y="%d" font-size="12">%s</text>' % (PAD, top - 6, title))
    out.append('<text x="%d" y="%d" font-size="10" text-anchor="end">%.0f</text>'
               % (PAD - 4, top + 10, v_max))
    out.append('<text x="%d" y="%d" font-size="10" text-anchor="end">0</text>'
               % (PAD - 4, top + H))
    if points:
        path = " ".join("%.1f,%.1f" % (xs(t), ys(v)) for t, v in points)
        out.append('<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="%s"/>' % path)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    cols, rows, t0 = read(sys.argv[1])
    t_max = max((int(r[cols["time"]]) - t0 for r in rows), default=0)
    height = len(PANELS) * (H + GAP + 20) + 40
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif">'
           % (W, height), '<rect width="100%" height="100%" fill="white"/>']
    for i, (col, title, conv) in enumerate(PANELS):
        points = []
        for r in rows:
            raw = r[cols[col]]
            try:
                points.append((int(r[cols["time"]]) - t0, conv(float(raw))))
            except ValueError:
                continue  # "-" (no delivery in the interval) or "inf"
        panel(out, 30 + i * (H + GAP + 20), title, points, t_max)
    out.append('<text x="%d" y="%d" font-size="11" text-anchor="middle">seconds since start (%d s)</text>'
               % (W // 2, height - 8, t_max))
    out.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
