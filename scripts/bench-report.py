#!/usr/bin/env python3
"""Summarises `scripts/bench-compare.sh` results: median ops/s and p99 per
(system, workload, regions) over the rounds, ratios Mnemosyne/etcd and
Mnemosyne/RocksDB, written as a table on stdout, JSON, and an SVG bar chart.

Usage: bench-report.py RAW.jsonl OUT.json OUT.svg
"""
import json
import platform
import statistics
import sys
from collections import defaultdict


def main(raw_path, json_path, svg_path):
    runs = [json.loads(line) for line in open(raw_path) if line.strip()]
    groups = defaultdict(list)
    for r in runs:
        groups[(r["target"], r["options"]["workload"], r["regions"])].append(r)
    summary = {}
    for (system, workload, regions), rs in groups.items():
        summary.setdefault(workload, {})[f"{system}@{regions}"] = {
            "system": system,
            "regions": regions,
            "rounds": len(rs),
            "ops_per_sec": statistics.median(r["total"]["ops_per_sec"] for r in rs),
            "p99_us": statistics.median(r["total"]["p99_us"] for r in rs),
            "errors": sum(r["total"]["errors"] for r in rs),
        }

    def best(workload, system, regions=None):
        cands = [v for v in summary.get(workload, {}).values() if v["system"] == system and (regions is None or v["regions"] == regions)]
        return cands[0] if cands else None

    base_regions = min((v["regions"] for w in summary.values() for v in w.values() if v["system"] == "mnemosyne"), default=1)
    rows = []
    print(f"{'workload':<10} {'mnemo ops/s':>12} {'etcd ops/s':>11} {'ratio':>6} {'mnemo p99':>10} {'etcd p99':>9} {'vs rocksdb':>10}")
    for workload in summary:
        m, e, k = best(workload, "mnemosyne", base_regions), best(workload, "etcd"), best(workload, "rocksdb")
        if not m:
            continue
        row = {
            "workload": workload,
            "mnemosyne_ops_per_sec": m["ops_per_sec"],
            "etcd_ops_per_sec": e["ops_per_sec"] if e else None,
            "ratio_vs_etcd": m["ops_per_sec"] / e["ops_per_sec"] if e and e["ops_per_sec"] else None,
            "mnemosyne_p99_us": m["p99_us"],
            "etcd_p99_us": e["p99_us"] if e else None,
            "ratio_vs_rocksdb": m["ops_per_sec"] / k["ops_per_sec"] if k and k["ops_per_sec"] else None,
        }
        rows.append(row)
        fmt = lambda x, f: f.format(x) if x is not None else "-"
        print(
            f"{workload:<10} {m['ops_per_sec']:>12.0f} {fmt(row['etcd_ops_per_sec'], '{:>11.0f}'):>11} "
            f"{fmt(row['ratio_vs_etcd'], '{:.2f}'):>6} {m['p99_us'] / 1000:>8.2f}ms "
            f"{fmt(row['etcd_p99_us'] and row['etcd_p99_us'] / 1000, '{:.2f}ms'):>9} {fmt(row['ratio_vs_rocksdb'], '{:.2f}'):>10}"
        )
    scaling = []
    for workload in ("put", "get"):
        one = best(workload, "mnemosyne", base_regions)
        for v in sorted((v for v in summary.get(workload, {}).values() if v["system"] == "mnemosyne"), key=lambda v: v["regions"]):
            if one and v["regions"] != base_regions:
                scaling.append({"workload": workload, "regions": v["regions"], "ops_per_sec": v["ops_per_sec"],
                                "vs_base": v["ops_per_sec"] / one["ops_per_sec"]})
                print(f"{workload:<10} {v['regions']:>5} regions: {v['ops_per_sec']:>9.0f} ops/s = {v['ops_per_sec'] / one['ops_per_sec']:.2f}x of {base_regions} region(s)")
    result = {
        "machine": {"node": platform.node(), "cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "ratios": rows,
        "region_scaling": scaling,
        "summary": summary,
        "runs": runs,
    }
    json.dump(result, open(json_path, "w"), indent=2)
    write_svg(rows, svg_path)
    print(f"results: {json_path}, chart: {svg_path}")


def write_svg(rows, path):
    """Grouped bars: Mnemosyne and etcd ops/s per workload."""
    width, height, left, top, bar = 760, 360, 70, 30, 26
    top_value = max([r["mnemosyne_ops_per_sec"] for r in rows] + [r["etcd_ops_per_sec"] or 0 for r in rows] + [1])
    scale = (height - top - 60) / top_value
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="18" font-size="14">ops/s (median of rounds): Mnemosyne (blue) vs etcd (grey)</text>']
    base = height - 40
    for i, r in enumerate(rows):
        x = left + i * (2 * bar + 30)
        for j, (value, color) in enumerate([(r["mnemosyne_ops_per_sec"], "#3b6fd6"), (r["etcd_ops_per_sec"] or 0, "#999")]):
            h = value * scale
            parts.append(f'<rect x="{x + j * bar}" y="{base - h:.1f}" width="{bar - 2}" height="{h:.1f}" fill="{color}"/>')
            parts.append(f'<text x="{x + j * bar}" y="{base - h - 4:.1f}" font-size="9">{value / 1000:.1f}k</text>')
        parts.append(f'<text x="{x}" y="{base + 16}">{r["workload"]}</text>')
    parts.append(f'<line x1="{left - 5}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="black"/>')
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts))


if __name__ == "__main__":
    main(*sys.argv[1:4])
