#!/usr/bin/env python3
"""Replays hostile captures with a release build and prints peak RSS and the counters.

    cargo build --release
    python3 tests/hostile/make.py /tmp/hostile --scale full
    python3 tests/hostile/measure.py /tmp/hostile [CONFIG.toml ...]

Each capture is replayed with every config (default: the built-in defaults and the caps in
tests/hostile/*.toml) from standard input; peak RSS is the child's ru_maxrss. Prints a Markdown
table.
"""
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("TAPWATCH_BIN") or os.path.join(ROOT, "target", "release", "tapwatch")


def run(capture, config):
    # Through standard input: a regular file is memory-mapped, and its resident pages (page cache,
    # reclaimable) would count in RSS in proportion to the file's size; a stream is read through
    # a bounded buffer, as live capture is, so RSS shows the sensor's own memory.
    args = [BIN, "replay", "-q", "--no-model", "-"]
    if config:
        args[2:2] = ["-c", config]
    t0 = time.time()
    p = subprocess.Popen(args, stdin=open(capture, "rb"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    last_stats = None
    for line in p.stdout:
        if b'"event_type":"stats"' in line:
            last_stats = line
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.time() - t0
    if status != 0 or last_stats is None:
        return {"error": f"exit {status}: {err.decode(errors='replace')[:300]}"}
    st = json.loads(last_stats)["stats"]
    return {"rss_mib": ru.ru_maxrss / 1024, "wall": wall, "stats": st}


def main(argv):
    d = argv[1]
    configs = argv[2:] or [None] + sorted(glob.glob(os.path.join(ROOT, "tests", "hostile", "*.toml")))
    print("| capture | packets | config | peak RSS | wall | flows (peak active / evicted) | tcp (ooo / overflows / gaps / overlap bytes / depth) | stream buffers (peak MiB / flows shed) | skipped | anomalies |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cap in sorted(glob.glob(os.path.join(d, "*.pcap"))):
        for cfg in configs:
            r = run(cap, cfg)
            name = os.path.basename(cap)
            cname = os.path.basename(cfg) if cfg else "defaults"
            if "error" in r:
                print(f"| {name} | | {cname} | {r['error']} |")
                continue
            st = r["stats"]
            f, t = st["flow"], st["tcp"]
            skipped = {k: v for k, v in st["decoder"]["skipped_by_reason"].items() if v}
            an = st["app_layer"].get("anomalies", {})
            print(
                f"| {name} | {st['decoder']['pkts']:,} | {cname} | {r['rss_mib']:.1f} MiB | {r['wall']:.1f} s "
                f"| {f['total']:,} ({f['peak_active']:,} / {f['evicted']:,}) "
                f"| {t['ooo_segments']:,} / {t['ooo_overflows']:,} / {t['gaps']:,} / {t['overlap_bytes']:,} / {t['depth_reached']:,} "
                f"| {t.get('buffered_peak_bytes', 0) / 1048576:.1f} / {t.get('memcap_flows', 0):,} "
                f"| {', '.join(f'{k} {v:,}' for k, v in skipped.items()) or '-'} "
                f"| {', '.join(f'{k} {v:,}' for k, v in an.items()) or '-'} |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
