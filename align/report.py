"""docs/parity.md from the declared checks, the known divergences and the last measured align run.

The tolerances shown there are read from the ``CHECKS`` of ``align/cases/<family>.py`` (the ones the align
scripts apply), the known divergences from ``align/known_divergences.py``, and the measured values from
``align/measured.json``, which ``--collect`` fills from the ``*_strict.json`` files of an align run. The page is
never edited by hand: tests/test_report.py fails when it differs from what this script renders.

Usage:
  python align/report.py --collect align/output   # record a run's measurements (default models, all stages)
  python align/report.py --rejudge align/output   # re-apply changed tolerances / bounds to a run's saved arrays
  python align/report.py                          # write docs/parity.md
  python align/report.py --check                  # exit 1 if docs/parity.md is out of date
"""
import argparse
import importlib
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MEASURED = os.path.join(HERE, "measured.json")
DOC = os.path.join(ROOT, "docs", "parity.md")
STAGES = ("forward", "metric", "loss", "backward")
FAMILIES = (("factseg", ("factseg",)), ("rsmamba", ("rsmamba_b",)),
            ("upernet", ("upernet_r50", "upernet_swin_t", "upernet_vitaev2_s")))


def family_checks(family):
    return importlib.import_module(f"align.cases.{family}").CHECKS


def collect(out_dir, measured_path=MEASURED, cpu_kernels=None):
    """Merge the ``*_strict.json`` results under ``out_dir`` into ``measured_path``; returns the merged dict.
    ``cpu_kernels``: the accelerator mode of a run whose files predate its recording (``on`` / ``off``)."""
    data = load_measured(measured_path)
    found = 0
    for _, models in FAMILIES:
        for model in models:
            for stage in STAGES:
                path = os.path.join(out_dir, model, f"{stage}_strict.json")
                if not os.path.isfile(path):
                    continue
                with open(path) as f:
                    run = json.load(f)
                data["results"].setdefault(model, {})[stage] = {
                    r["key"]: {k: r.get(k) for k in ("max_abs", "max_rel", "rel_max", "used", "status", "tol")}
                    for r in run["results"]}
                env = dict(run["environment"])
                if cpu_kernels and "cpu_kernels" not in env:
                    env["cpu_kernels"] = cpu_kernels
                data["environment"][f"{model}/{stage}"] = env
                found += 1
    if not found:
        raise SystemExit(f"no *_strict.json under {out_dir}: run python align/0*_*.py first")
    with open(measured_path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=_num)
        f.write("\n")
    return data


def rejudge(out_dir):
    """Re-apply the current declarations to an align run's saved arrays (``<stage>_torch.npy`` /
    ``<stage>_paddle.npy``), rewriting its ``*_strict.json``: after a tolerance or a known-divergence bound changed,
    the verdicts follow without running the models again (the environment of the run is kept)."""
    import dataclasses

    import numpy as np
    from reprod_log import ReprodDiffHelper

    from align.harness import compare, find_check
    helper = ReprodDiffHelper()
    for family, models in FAMILIES:
        checks = family_checks(family)
        for model in models:
            for stage in STAGES:
                base = os.path.join(out_dir, model, stage)
                if not os.path.isfile(base + "_strict.json"):
                    continue
                t, p = helper.load_info(base + "_torch.npy"), helper.load_info(base + "_paddle.npy")
                with open(base + "_strict.json") as f:
                    run = json.load(f)
                notes = {r["key"]: r["note"] for r in run["results"]}
                results = []
                for key in t:
                    c = find_check(checks, stage, model, key)
                    r = compare(key, t[key], p[key], c.tol, c.known, stage, model)
                    if not np.any(t[key]) and np.all(np.asarray(p[key]) >= 0):    # a gap key (StageLog.add_gap)
                        r.max_rel = r.max_abs
                        r.note = notes.get(key, r.note)
                    results.append(dataclasses.asdict(r))
                run["results"] = results
                with open(base + "_strict.json", "w") as f:
                    json.dump(run, f, indent=1, default=str)


def _num(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def load_measured(path=MEASURED):
    if not os.path.isfile(path):
        return {"environment": {}, "results": {}}
    with open(path) as f:
        return json.load(f)


def _cell(text):
    """Text for a markdown table cell (a literal ``|`` would end the cell)."""
    return str(text).replace("|", "\\|")


def _fmt(v):
    if v is None:
        return "–"
    if v == 0:
        return "0"
    return f"{v:.1e}"


def _measure(check, rows):
    """The value that matches the check's tolerance, the largest over the matching keys: the absolute difference
    (or normalised gap), the relative difference, or the difference as a share of the reference's largest value;
    for exact checks whether the values were bit-identical."""
    t = check.tol
    if t.exact:
        return "bit-identical" if all((r.get("used") or 0) == 0 for r in rows) else "differs"
    field = "rel_max" if (t.rtol and t.rel_to_max) else ("max_rel" if (t.rtol and not t.atol) else "max_abs")
    return _fmt(max((r.get(field) or 0) for r in rows))


def _status(rows):
    st = sorted({r["status"] for r in rows})
    if "FAIL" in st:
        return "**FAIL**"
    known = [s for s in st if s.startswith("KNOWN")]
    return ", ".join(known) if known else "pass"


def render(measured=None):
    measured = load_measured() if measured is None else measured
    from align.known_divergences import KNOWN
    res = measured.get("results", {})
    out = ["# Parity: what is compared, to what tolerance, and what was measured", "",
           "<!-- generated by `python align/report.py` from align/cases/*.py, align/known_divergences.py and "
           "align/measured.json; do not edit -->", "",
           "Each row is one declared check of `align/cases/<family>.py` (a `*` in a key matches several keys). "
           "The tolerance is what `python align/0N_*.py` applies; *measured* is the largest value over the "
           "matching keys in the last recorded run (`python align/report.py --collect align/output`), in the "
           "unit of the tolerance (absolute difference or normalised gap; relative difference; share of the "
           "reference's largest value). A check that names a known divergence passes as `KNOWN(Dn)` only while the "
           "difference stays inside the bound documented for that model and key (below).", ""]
    envs = measured.get("environment", {})
    if envs:
        e = next(iter(envs.values()))
        modes = sorted({v.get("cpu_kernels", "not recorded") for v in envs.values()})
        out += [f"Last run: Paddle {e.get('paddle')}, torch {e.get('torch')}, numpy {e.get('numpy')}, "
                f"{e.get('device')}, {e.get('torch_threads')} threads, commit {e.get('git')}, CPU accelerator "
                f"(`--cpu-kernels`): {', '.join(modes)}.", ""]
    for family, models in FAMILIES:
        out += [f"## {family}: {', '.join(f'`{m}`' for m in models)}", ""]
        checks = family_checks(family)
        for stage in STAGES:
            rows = [c for c in checks if c.stage == stage]
            if not rows:
                continue
            head = "| key | what | tolerance | known |" + "".join(f" {m} |" for m in models)
            out += [f"### {stage}", "", head, "|" + "---|" * (4 + len(models))]
            for c in rows:
                cells = []
                for m in models:
                    if c.models and m not in c.models:
                        cells.append("")
                        continue
                    got = res.get(m, {}).get(stage, {})
                    match = [v for k, v in got.items() if _owner(checks, stage, m, k) is c]
                    cells.append(f"{_measure(c, match)} ({_status(match)})" if match else "not run")
                scope = f" ({', '.join(c.models)})" if c.models else ""
                out.append(f"| `{c.key}`{scope} | {_cell(c.what)} | {_cell(c.tol.describe())} | {c.known or ''} |"
                           + "".join(f" {x} |" for x in cells))
            out.append("")
    out += ["## Known divergences", "",
            "| id | what | cause | how the checks handle it |", "|---|---|---|---|"]
    for d in KNOWN.values():
        if d.bounds:
            how = "; ".join(f"{b.models} `{b.key}`: measured {b.measured:.1e}, bound {b.bound:.1e} ({b.measure})"
                            + (f", the compared quantity itself {b.qualifies:.1e}" if b.qualifies else "")
                            for b in d.bounds)
        else:
            how = d.handling or "documentation only"
        out.append(f"| {d.id} | {_cell(d.title)} | {_cell(d.cause)} | {_cell(how)} |")
    out.append("")
    return "\n".join(out)


def _owner(checks, stage, model, key):
    from align.harness import find_check
    try:
        return find_check(checks, stage, model, key)
    except KeyError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collect", metavar="DIR", help="record the measurements of an align run's output directory")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/parity.md differs from the rendering")
    ap.add_argument("--rejudge", metavar="DIR", help="re-apply the declarations to DIR's saved arrays, then collect")
    ap.add_argument("--cpu-kernels", dest="cpu_kernels", choices=("on", "off"), default=None,
                    help="with --collect / --rejudge: the accelerator mode of runs whose files do not record it")
    args = ap.parse_args(argv)
    if args.rejudge:
        rejudge(args.rejudge)
        collect(args.rejudge, cpu_kernels=args.cpu_kernels)
    elif args.collect:
        collect(args.collect, cpu_kernels=args.cpu_kernels)
    text = render()
    if args.check:
        with open(DOC) as f:
            if f.read() != text:
                print(f"{DOC} is out of date: run python align/report.py")
                return 1
        return 0
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(DOC, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
