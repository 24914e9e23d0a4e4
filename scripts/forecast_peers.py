"""Side-by-side forecast accuracy: `backroom forecast backtest` against Nixtla's statsforecast.

Run through `scripts/forecast-peers` (it sets up the venv with the pinned statsforecast). For each
set it holds out the last H points of every series exactly as our CLI does (series with <= H
points are skipped on both sides), fits each statsforecast model on the rest (n_jobs=1: one model
at a time, one series at a time, through each model's own `forecast`, which is what
`StatsForecast.forecast` calls per series), scores it with the metric definitions of
`src/forecast/metrics.rs` and the averaging of `src/forecast/evaluate.rs`, runs our CLI on the
same file, and prints one table and the verdict on issue #21's targets.
"""

import argparse
import csv
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# M4's horizons for its daily (14) and weekly (13) series; bike_weekly is intermittent, no season.
DEFAULTS = {"aus_retail": (12, 12), "pbs_cost": (12, 12), "walmart_weekly": (52, 8),
            "m4_daily": (7, 14), "m4_weekly": (52, 13), "bike_weekly": (1, 8)}
LEVEL = 95
TSB_ALPHA_D, TSB_ALPHA_P = 0.1, 0.1


def say(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- metrics (as metrics.rs)


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else None


def _positive(scale):
    return scale if scale is not None and scale > 0 and math.isfinite(scale) else None


def mase(insample, actual, forecast, m):
    """MAE / mean |in-sample diff at lag m| (lag 1 when len(insample) <= m or m == 0)."""
    lag = max(m, 1) if len(insample) > m else 1
    if len(insample) <= lag:
        return None
    scale = sum(abs(a - b) for a, b in zip(insample[lag:], insample)) / (len(insample) - lag)
    mae = _mean(abs(a - f) for a, f in zip(actual, forecast))
    s = _positive(scale)
    return None if mae is None or s is None else mae / s


def smape(actual, forecast):
    """200/h * sum |y - f| / (|y| + |f|), a 0/0 term counts 0; 0 for empty input."""
    terms = (0.0 if abs(a) + abs(f) == 0 else 200 * abs(a - f) / (abs(a) + abs(f))
             for a, f in zip(actual, forecast))
    v = _mean(terms)
    return 0.0 if v is None else v


def rmsse(insample, actual, forecast):
    """sqrt(MSE / mean squared lag-1 in-sample diff), the scale from the first non-zero value on."""
    start = next((i for i, v in enumerate(insample) if v != 0), None)
    if start is None:
        return None
    active = insample[start:]
    scale = _mean((a - b) ** 2 for a, b in zip(active[1:], active))
    mse = _mean((a - f) ** 2 for a, f in zip(actual, forecast))
    if scale is None or mse is None:
        return None
    s = _positive(scale)
    return None if s is None else math.sqrt(mse / s)


class Sums:
    """Means over the series where each metric is defined and finite; coverage pooled over the
    held-out points (evaluate.rs `Sums`)."""

    def __init__(self):
        self.v = {"mase": [0.0, 0], "smape": [0.0, 0], "rmsse": [0.0, 0]}
        self.covered = [0, 0]
        self.series = 0

    def add(self, insample, actual, point, season, lo=None, hi=None):
        self.series += 1
        for key, val in (("mase", mase(insample, actual, point, season)),
                         ("smape", smape(actual, point)),
                         ("rmsse", rmsse(insample, actual, point))):
            if val is not None and math.isfinite(val):
                self.v[key][0] += val
                self.v[key][1] += 1
        if lo is not None and hi is not None:
            self.covered[0] += sum(1 for y, l, h in zip(actual, lo, hi) if l <= y <= h)
            self.covered[1] += len(actual)

    def mean(self):
        out = {k: (s / n if n else None) for k, (s, n) in self.v.items()}
        out["coverage"] = self.covered[0] / self.covered[1] if self.covered[1] else None
        return out


# ---------------------------------------------------------------- data


def read_series(path):
    """{series_id: [(period text, value text)]} in period order; periods sorted as integers,
    else as dates, else as text (as `read_series_file` does)."""
    series = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            series.setdefault(row["series_id"], []).append((row["period"], row["value"]))
    periods = [p for pts in series.values() for p, _ in pts]

    def all_parse(fn):
        try:
            for p in periods:
                fn(p)
            return True
        except ValueError:
            return False

    if all_parse(int):
        key = int
    elif all_parse(lambda p: dt.datetime.strptime(p, "%Y-%m-%d")):
        key = lambda p: dt.datetime.strptime(p, "%Y-%m-%d")  # noqa: E731
    else:
        key = str
    return {sid: sorted(pts, key=lambda pv: key(pv[0])) for sid, pts in series.items()}


def write_cut(series, last, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["series_id", "period", "value"])
        for sid, pts in series.items():
            w.writerows([sid, p, v] for p, v in pts[-last:])


def parse_set(spec, data_dir, last_default):
    """`name_or_path[:season:horizon[:last]]`."""
    parts = spec.split(":")
    target = parts[0]
    if os.sep in target or target.endswith(".csv"):
        path, name = target, os.path.splitext(os.path.basename(target))[0]
    else:
        path, name = os.path.join(data_dir, "tsdata", target + ".csv"), target
    if len(parts) >= 3:
        season, horizon = int(parts[1]), int(parts[2])
    elif name in DEFAULTS:
        season, horizon = DEFAULTS[name]
    else:
        sys.exit(f"forecast-peers: {spec}: give season and horizon as {target}:SEASON:HORIZON")
    last = int(parts[3]) if len(parts) >= 4 else last_default
    if season < 1 or horizon < 1 or (last is not None and last < 1):
        sys.exit(f"forecast-peers: {spec}: season, horizon and last must be at least 1")
    return {"name": name, "path": path, "season": season, "horizon": horizon, "last": last}


# ---------------------------------------------------------------- the two sides


def run_ours(binary, path, season, horizon, threads):
    env = dict(os.environ)
    if threads > 0:
        env["RAYON_NUM_THREADS"] = str(threads)
        env["POLARS_MAX_THREADS"] = str(threads)
    cmd = [binary, "forecast", "backtest", "--csv", path, "--season", str(season),
           "--horizon", str(horizon), "--json"]
    say(f"  ours: {' '.join(cmd)}" + (f"  (RAYON_NUM_THREADS={threads})" if threads > 0 else ""))
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"forecast-peers: our CLI failed (exit {proc.returncode})")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    report = json.loads(line)
    say(f"  ours: {report['series']} series in {report['seconds']:.2f} s "
        f"(process wall {wall:.2f} s, incl. reading the file)")
    return report, wall


def sf_models(season):
    from statsforecast.models import (ADIDA, IMAPA, MSTL, TSB, AutoETS, AutoTheta, CrostonSBA,
                                      Naive, SeasonalNaive, Theta)
    # (name, model, native 95 % intervals, minimum training length)
    return [
        ("SeasonalNaive", SeasonalNaive(season_length=season), True, 1),
        ("Naive", Naive(), True, 1),
        ("Theta", Theta(season_length=season), True, 1),
        ("AutoETS", AutoETS(season_length=season), True, 1),
        ("AutoTheta", AutoTheta(season_length=season), True, 1),
        # STL (statsmodels) needs two full seasons; the trend model is non-seasonal AutoETS.
        ("MSTL", MSTL(season_length=season, trend_forecaster=AutoETS(model="ZZN")), True,
         2 * season),
        ("CrostonSBA", CrostonSBA(), False, 1),
        ("TSB", TSB(alpha_d=TSB_ALPHA_D, alpha_p=TSB_ALPHA_P), False, 1),
        ("IMAPA", IMAPA(), False, 1),
        ("ADIDA", ADIDA(), False, 1),
    ]


def run_sf(splits, season, horizon, only):
    import numpy as np

    tty = sys.stderr.isatty()
    results = {}
    for name, model, has_level, min_len in sf_models(season):
        if only and name not in only:
            continue
        sums, seconds, failed, too_short, n_warn, first_warn = Sums(), 0.0, {}, 0, 0, None
        todo = len(splits)
        for i, (sid, train, truth) in enumerate(splits):
            if len(train) < min_len:
                too_short += 1
                continue
            y = np.asarray(train, dtype=np.float64)
            kwargs = {"level": [LEVEL]} if has_level else {}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                try:
                    res = model.forecast(y=y, h=horizon, X=None, X_future=None, fitted=False,
                                         **kwargs)
                except Exception as e:  # noqa: BLE001 - counted and reported per model
                    seconds += time.perf_counter() - start
                    failed[sid] = f"{type(e).__name__}: {e}"
                    continue
                seconds += time.perf_counter() - start
            n_warn += len(caught)
            if caught and first_warn is None:
                first_warn = f"{caught[0].category.__name__}: {caught[0].message}"
            point = [float(v) for v in res["mean"]]
            lo = [float(v) for v in res[f"lo-{LEVEL}"]] if has_level else None
            hi = [float(v) for v in res[f"hi-{LEVEL}"]] if has_level else None
            sums.add(train, truth, point, season, lo, hi)
            if tty and (i + 1) % 5 == 0:
                print(f"\r  sf {name:<14} {i + 1}/{todo} series  {seconds:7.1f} s",
                      end="", file=sys.stderr, flush=True)
        if tty:
            print("\r\033[K", end="", file=sys.stderr)
        note = []
        if too_short:
            note.append(f"{too_short} shorter than {min_len} skipped")
        if failed:
            note.append(f"{len(failed)} failed, e.g. {next(iter(failed.values()))[:100]}")
        if n_warn:
            note.append(f"{n_warn} warnings, e.g. {first_warn[:80]}")
        say(f"  sf {name:<14} {sums.series}/{todo} series  {seconds:7.2f} s"
            + (f"  ({'; '.join(note)})" if note else ""))
        results[name] = {**sums.mean(), "seconds": seconds, "series": sums.series,
                         "too_short": too_short, "failed": len(failed), "warnings": n_warn,
                         "intervals": has_level}
    return results


# ---------------------------------------------------------------- report


def cell(v, fmt="{:8.3f}", width=8):
    return fmt.format(v) if v is not None else "-".rjust(width)


def table(title, ours, ours_threads, sf, n_series):
    lines = [title,
             f"  {'side':<5} {'model':<16} {'n':>5} {'MASE':>8} {'sMAPE':>8} {'RMSSE':>8} "
             f"{'cover95':>8} {'seconds':>9}"]

    def row(side, name, n, s, secs):
        lines.append(f"  {side:<5} {name:<16} {n:>5} {cell(s.get('mase'))} {cell(s.get('smape'))} "
                     f"{cell(s.get('rmsse'))} {cell(s.get('coverage'))} "
                     f"{cell(secs, '{:9.2f}', 9)}")

    for name, s in ours["models"].items():
        row("ours", name, ours["series"], s, None)
    row("ours", "CHOSEN", ours["series"], ours["chosen"], ours["seconds"])
    for name, s in sf.items():
        row("sf", name, s["series"], s, s["seconds"])
    mix = ", ".join(f"{k} {v}" for k, v in ours["chosen"]["models"].items())
    lines.append(f"  ours: CHOSEN = the per-series choice; its seconds are the whole backtest "
                 f"(every model + the choice), {ours_threads}")
    lines.append(f"  ours chosen mix: {mix}")
    for cls, models in ours["chosen"].get("classes", {}).items():
        lines.append(f"    {cls} ({sum(models.values())}): "
                     + ", ".join(f"{k} {v}" for k, v in models.items()))
    short = [f"{k} on {v['series']}" for k, v in sf.items() if v["series"] != n_series]
    if short:
        lines.append(f"  sf models scored on fewer than all {n_series} series: {', '.join(short)}")
    return lines


def verdict(ours, sf, debug_build, ours_threads):
    out, figures = [], {}
    chosen = ours["chosen"]

    def line(key, ok, text):
        figures[key] = {"pass": ok, "text": text}
        out.append(f"  ({key}) {'PASS' if ok else 'MISS' if ok is not None else 'N/A '}  {text}")

    snaive = ours["models"].get("seasonal_naive", {}).get("mase")
    c = chosen.get("mase")
    if c is not None and snaive:
        gain = 1 - c / snaive
        line("a", gain >= 0.10, f"chosen MASE {c:.3f} vs ours seasonal_naive {snaive:.3f}: "
             f"{100 * gain:.1f} % better (target >= 10 %)")
    else:
        line("a", None, "no MASE")
    n = ours["series"]

    def best(metric):
        cand = [(v[metric], k) for k, v in sf.items() if v.get(metric) is not None]
        return min(cand) if cand else (None, None)

    for key, metric in (("b", "mase"), ("b-rmsse", "rmsse")):
        b, bname = best(metric)
        mine = chosen.get(metric)
        if b is None or mine is None:
            line(key, None, f"no {metric.upper()} to compare")
            continue
        beaten = [k for k, v in sf.items() if v.get(metric) is not None and v[metric] <= mine]
        caveat = "".join(f"; {k} scored on {sf[k]['series']} of {n} series"
                         for k in sf if sf[k]["series"] != n)
        extra = (" (the target is on intermittent sets)" if metric == "rmsse" else "")
        line(key, not beaten,
             f"chosen {metric.upper()} {mine:.3f} vs best statsforecast {bname} {b:.3f}"
             + (f"; not beaten by ours: {', '.join(beaten)}" if beaten else "; beats all")
             + caveat + extra)
    ets = sf.get("AutoETS")
    if ets and ours["seconds"] > 0:
        ratio = ets["seconds"] / ours["seconds"]
        line("c", ratio >= 20,
             f"ours {ours['seconds']:.2f} s (whole backtest, all models; "
             f"{ours_threads}{', debug build' if debug_build else ''}) vs statsforecast AutoETS "
             f"{ets['seconds']:.2f} s (fit+predict, 1 core): {ratio:.1f}x faster (target >= 20x)")
    else:
        line("c", None, "AutoETS not run")
    cov = chosen.get("coverage")
    line("d", cov is not None and 0.90 <= cov <= 0.98,
         f"chosen 95 % coverage {cov:.3f} (target 0.90-0.98)" if cov is not None else "no coverage")
    return out, figures


def main():
    ap = argparse.ArgumentParser(
        prog="scripts/forecast-peers",
        description="Side-by-side backtest: backroom's forecast models against statsforecast's.")
    ap.add_argument("sets", nargs="*",
                    help="NAME_OR_CSV[:SEASON:HORIZON[:LAST]]; NAME is a file of "
                         "<data dir>/tsdata (aus_retail, pbs_cost: 12:12, walmart_weekly: 52:8, "
                         "m4_daily: 7:14, m4_weekly: 52:13, bike_weekly: 1:8); default: all six")
    ap.add_argument("--last", type=int, default=None,
                    help="keep only the last N points of every series (for every set without "
                         "its own :LAST); the cut file is fed to both sides")
    ap.add_argument("--json", metavar="OUT", help="write all the figures to OUT")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for our CLI (RAYON_NUM_THREADS/POLARS_MAX_THREADS); 0 = its "
                         "default (all cores). Default 1, like statsforecast's n_jobs=1")
    ap.add_argument("--models", help="comma-separated statsforecast models to run (default all)")
    ap.add_argument("--skip-ours", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bin", default=os.environ.get("BACKROOM_BIN"), help="our binary")
    ap.add_argument("--data-dir", default=os.environ.get("BACKROOM_DATA_DIR",
                                                         os.path.join(REPO, ".data")))
    args = ap.parse_args()

    sets = [parse_set(s, args.data_dir, args.last)
            for s in (args.sets or list(DEFAULTS))]
    if any(not os.path.exists(s["path"]) and s["name"] in DEFAULTS for s in sets):
        say("fetching the data sets (scripts/fetch-tsdata)")
        subprocess.run([os.path.join(REPO, "scripts", "fetch-tsdata")], check=True)
    for s in sets:
        if not os.path.exists(s["path"]):
            sys.exit(f"forecast-peers: no file {s['path']}")
    if not args.skip_ours and not (args.bin and os.access(args.bin, os.X_OK)):
        sys.exit(f"forecast-peers: our binary {args.bin!r} is missing: build it (cargo build "
                 f"--bin backroom) or point BACKROOM_BIN at it")
    only = set(args.models.split(",")) if args.models else None
    known = {"SeasonalNaive", "Naive", "Theta", "AutoETS", "AutoTheta", "MSTL", "CrostonSBA",
             "TSB", "IMAPA", "ADIDA"}
    if only and only - known:
        sys.exit(f"forecast-peers: unknown --models {', '.join(sorted(only - known))} "
                 f"(known: {', '.join(sorted(known))})")

    import numpy
    import statsforecast
    versions = {"statsforecast": statsforecast.__version__, "numpy": numpy.__version__,
                "python": sys.version.split()[0]}
    ours_threads = (f"{args.threads} thread{'s' if args.threads > 1 else ''}" if args.threads > 0
                    else "all cores")
    debug_build = bool(args.bin) and f"{os.sep}debug{os.sep}" in args.bin
    say(f"statsforecast {versions['statsforecast']} (numpy {versions['numpy']}, python "
        f"{versions['python']}); ours: {args.bin} ({ours_threads})")

    report = {"versions": versions, "binary": args.bin, "ours_threads": args.threads,
              "tsb_alphas": [TSB_ALPHA_D, TSB_ALPHA_P], "level": LEVEL, "sets": []}
    printed = []
    with tempfile.TemporaryDirectory(prefix="forecast-peers.") as tmp:
        for s in sets:
            label = s["name"] + (f" (last {s['last']})" if s["last"] else "")
            series = read_series(s["path"])
            path = s["path"]
            if s["last"]:
                path = os.path.join(tmp, f"{s['name']}.last{s['last']}.csv")
                write_cut(series, s["last"], path)
                series = read_series(path)
            h = s["horizon"]
            splits = []
            for sid, pts in series.items():
                vals = [float(v) for _, v in pts]
                if len(vals) > h:
                    splits.append((sid, vals[:-h], vals[-h:]))
            skipped = len(series) - len(splits)
            lens = [len(t) for _, t, _ in splits]
            say(f"\n== {label}: {len(splits)} series ({skipped} skipped, not longer than {h}), "
                f"training length {min(lens) if lens else 0}..{max(lens) if lens else 0}, "
                f"season {s['season']}, horizon {h}")
            if args.skip_ours:
                ours = {"series": len(splits), "skipped": skipped, "seconds": 0.0, "models": {},
                        "chosen": {"models": {}, "classes": {}}}
                wall = 0.0
            else:
                ours, wall = run_ours(args.bin, path, s["season"], h, args.threads)
                if (ours["series"], ours["skipped"]) != (len(splits), skipped):
                    say(f"  WARNING: ours scored {ours['series']} series ({ours['skipped']} "
                        f"skipped), this script {len(splits)} ({skipped})")
            sf = run_sf(splits, s["season"], h, only)
            title = (f"{label}: {len(splits)} series ({skipped} skipped), season {s['season']}, "
                     f"horizon {h}, {sum(len(t) for _, t, _ in splits)} training points")
            lines = table(title, ours, ours_threads, sf, len(splits))
            vlines, figures = verdict(ours, sf, debug_build, ours_threads)
            lines += ["  verdict (issue #21 targets):"] + vlines
            print("\n".join(lines) + "\n", flush=True)
            printed.append(lines)
            report["sets"].append({
                "name": s["name"], "label": label, "csv": s["path"], "season": s["season"],
                "horizon": h, "last": s["last"], "series": len(splits), "skipped": skipped,
                "ours": {**ours, "process_wall_seconds": wall}, "statsforecast": sf,
                "verdict": figures})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        say(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
