#!/usr/bin/env python3
"""Collects what run.sh (tools/gpu-run.sh) measured into JSON files and one table.

usage: summarize.py WORK OUT DRY DEVICE

Reads WORK/steps.jsonl, WORK/bench/*.json(l), WORK/runs.jsonl with each run's summary.json
and rounds.jsonl, WORK/mem/*.csv (nvidia-smi samples) and OUT/gpu_check.json; writes
OUT/bench.json, OUT/scenarios.json, OUT/results.json and OUT/table.md, and prints the table.
Standard library only (the GPU machine's python).
"""
import glob
import json
import os
import sys


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def mem_samples(path):
    """(per-pid peak MiB, peak GPU MiB used, first GPU MiB used) from a sampler file."""
    apps, gpu = {}, []
    try:
        with open(path) as f:
            for line in f:
                parts = [p.strip() for p in line.strip().split(",")]
                if len(parts) < 4:
                    continue
                try:
                    v = float(parts[3])
                except ValueError:
                    continue
                if parts[1] == "app":
                    apps[parts[2]] = max(apps.get(parts[2], 0.0), v)
                elif parts[1] == "gpu":
                    gpu.append(v)
    except OSError:
        return None
    if not gpu and not apps:
        return None
    return {"per_pid_peak_mib": apps, "gpu_peak_mib": max(gpu) if gpu else None,
            "gpu_baseline_mib": gpu[0] if gpu else None}


def fmt(v, spec=".1f", none="-"):
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def main():
    work, out, dry, device = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    steps = load_jsonl(os.path.join(work, "steps.jsonl"))
    md = []
    title = "fedssl on the GPU" + (" — DRY RUN on the CPU (small sizes; the GPU legs ran on the CPU)" if dry else "")
    md.append(f"# {title}\n")
    env = load_json(os.path.join(out, "env.json")) or {}
    if env:
        md.append(f"- machine: {env.get('gpu') or 'no GPU'}; {env.get('nvidia_smi_cuda') or ''}; "
                  f"{env.get('nproc')} cores; torch {(env.get('torch') or {}).get('version', '-')}; "
                  f"bundle {(env.get('manifest') or {}).get('commit', '?')}\n")

    # --- gpu_check ---
    gc = load_json(os.path.join(out, "gpu_check.json"))
    md.append("## GPU check (fedssl's CPU ops vs candle's ops on the device; one round per pretext task)\n")
    if gc:
        worst = max(gc["ops"], key=lambda c: c["max_abs_diff"] / c["limit"] if c["limit"] else 0, default=None)
        md.append(f"- device {gc['device']}: **{'passed' if gc['ok'] else 'FAILED'}**; "
                  f"{len(gc['ops'])} tensors, {gc['ops_failed']} outside the tolerance "
                  f"(max |diff| <= {gc['tolerance']['rel']:g} x max|ref|)")
        if worst:
            md.append(f"- worst: {worst['case']} {worst['tensor']}: {worst['max_abs_diff']:.3g} "
                      f"(limit {worst['limit']:.3g}, {worst['max_abs_diff'] / worst['limit']:.2%} of it)")
        md.append("\n| task | loss | accuracy | steps | seconds | loss vs CPU (rel) |\n|---|---|---|---|---|---|")
        for t in gc.get("tasks", []):
            if t.get("ok"):
                md.append(f"| {t['task']} | {fmt(t['loss'], '.4f')} | {fmt(t.get('accuracy'), '.3f')} | "
                          f"{t['steps']} | {fmt(t['seconds'], '.2f')} | {fmt(t.get('loss_rel_diff_vs_cpu'), '.2e')} |")
            else:
                md.append(f"| {t['task']} | FAIL: {t.get('error', '')[:120]} | | | | |")
        md.append("")
    else:
        md.append("- no gpu_check.json (the step did not run or did not finish)\n")

    # --- bench ---
    fed = {}
    for path in sorted(glob.glob(os.path.join(work, "bench", "fedssl-*.json"))):
        r = load_json(path)
        if not r:
            continue
        b = r["batch"]
        res = next((x for x in r.get("results", []) if x.get("ops") == "fedssl"), None)
        if res:
            fed[("resnet", b)] = res
        if r.get("vgg11_bn"):
            fed[("vgg11", b)] = r["vgg11_bn"]
        if r.get("vit"):
            fed[("vit", b)] = r["vit"]
    torch_rows = {}
    for mode in ("eager", "compile"):
        for t in load_jsonl(os.path.join(work, "bench", f"torch-{mode}.jsonl")):
            torch_rows[(t.get("model"), t.get("batch"), mode)] = t
    bench_mem = {}
    for path in glob.glob(os.path.join(work, "mem", "bench-*.csv")):
        m = mem_samples(path)
        if m:
            bench_mem[os.path.basename(path)[6:-4]] = m
    rows = []
    keys = sorted({(m, b) for (m, b) in fed} | {(m, b) for (m, b, _) in torch_rows},
                  key=lambda k: (["resnet", "vgg11", "vit"].index(k[0]) if k[0] in ("resnet", "vgg11", "vit") else 9, k[1]))
    for model, b in keys:
        f = fed.get((model, b), {})
        te = torch_rows.get((model, b, "eager"), {})
        tc = torch_rows.get((model, b, "compile"), {})
        row = {
            "model": model, "batch": b,
            "fedssl_train_ips": f.get("train_images_per_s"),
            "fedssl_infer_ips": f.get("inference_images_per_s"),
            "fedssl_train_ips_median": f.get("train_images_per_s_median"),
            "fedssl_infer_ips_median": f.get("inference_images_per_s_median"),
            "torch_eager_train_ips": te.get("train_ips"), "torch_eager_infer_ips": te.get("infer_ips"),
            "torch_compile_train_ips": tc.get("train_ips"), "torch_compile_infer_ips": tc.get("infer_ips"),
            "torch_eager_error": te.get("error"), "torch_compile_error": tc.get("error"),
            "torch_compile_seconds": tc.get("compile_seconds"),
            "torch_eager_cuda_peak_allocated_bytes": te.get("cuda_peak_allocated_bytes"),
        }
        row["ratio_train_vs_eager"] = ratio(row["fedssl_train_ips"], row["torch_eager_train_ips"])
        row["ratio_infer_vs_eager"] = ratio(row["fedssl_infer_ips"], row["torch_eager_infer_ips"])
        row["ratio_train_vs_compile"] = ratio(row["fedssl_train_ips"], row["torch_compile_train_ips"])
        row["ratio_infer_vs_compile"] = ratio(row["fedssl_infer_ips"], row["torch_compile_infer_ips"])
        rows.append(row)
    breakdown = []
    for path in sorted(glob.glob(os.path.join(work, "bench", "fedssl-*.json"))):
        r = load_json(path) or {}
        for row in r.get("breakdown_ms_per_step", []):
            if "(candle)" in row.get("op", "") or "(fedssl)" in row.get("op", ""):
                breakdown.append({"batch": r.get("batch"), **row})
    bench = {"device": device, "dry_run": dry, "breakdown_ms_per_step": breakdown,
             "statistic": "images per second over the best timed step (device synchronised); ratio = fedssl / PyTorch",
             "pytorch_settings": "float32 without TF32, cudnn.benchmark on (pytorch_bench.py)",
             "rows": rows, "fedssl_raw": {f"{m}-{b}": v for (m, b), v in fed.items()},
             "torch_raw": [v for v in torch_rows.values()], "gpu_memory_during_bench": bench_mem}
    json.dump(bench, open(os.path.join(out, "bench.json"), "w"), indent=1)
    md.append(f"## fedssl vs PyTorch, same {'device' if dry else 'GPU'} (images/s; ratio = fedssl / PyTorch)\n")
    md.append("| model | batch | fedssl train | PyTorch eager | ratio | PyTorch compile | ratio | fedssl inference | PyTorch eager | ratio | PyTorch compile | ratio |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        md.append(f"| {r['model']} | {r['batch']} | {fmt(r['fedssl_train_ips'], '.0f')} | {fmt(r['torch_eager_train_ips'], '.0f')} | "
                  f"{fmt(r['ratio_train_vs_eager'], '.2f')} | {fmt(r['torch_compile_train_ips'], '.0f', 'n/a' if r['torch_compile_error'] else '-')} | "
                  f"{fmt(r['ratio_train_vs_compile'], '.2f')} | {fmt(r['fedssl_infer_ips'], '.0f')} | {fmt(r['torch_eager_infer_ips'], '.0f')} | "
                  f"{fmt(r['ratio_infer_vs_eager'], '.2f')} | {fmt(r['torch_compile_infer_ips'], '.0f', 'n/a' if r['torch_compile_error'] else '-')} | "
                  f"{fmt(r['ratio_infer_vs_compile'], '.2f')} |")
    if breakdown:
        md.append("\nResNet step by op kind, each op timed alone at the model's shapes (ms; on CUDA both rows are candle's kernels):\n")
        md.append("| batch | op | forward | forward + backward |\n|---|---|---|---|")
        for r in breakdown:
            md.append(f"| {r['batch']} | {r['op']} | {fmt(r.get('fwd'), '.2f')} | {fmt(r.get('fwd_bwd'), '.2f')} |")
    errs = [(r["model"], r["batch"], r["torch_compile_error"]) for r in rows if r["torch_compile_error"]]
    for m, b, e in errs:
        md.append(f"- torch.compile {m} batch {b}: {e[:200]}")
    md.append("")

    # --- scenarios ---
    runs = load_jsonl(os.path.join(work, "runs.jsonl"))
    scen = []
    for r in runs:
        o = r["out"]
        s = load_json(os.path.join(o, "summary.json")) or {}
        rounds = load_jsonl(os.path.join(o, "rounds.jsonl"))
        ev = s.get("eval") or {}
        pids = {}
        try:
            for line in open(o + ".pids"):
                k, p = line.split()
                pids[p] = int(k)
        except OSError:
            pass
        mem = mem_samples(os.path.join(work, "mem", f"{r['tag']}-{r['role']}.csv"))
        per_client = None
        if mem:
            per_client = {f"client-{pids[p]}": v for p, v in mem["per_pid_peak_mib"].items() if p in pids}
        tail = ""
        try:
            tail = open(o + ".coordinator.log").read().strip().splitlines()[-1][-300:]
        except (OSError, IndexError):
            pass
        client_tails = {}
        for path in sorted(glob.glob(o + ".client-*.log")):
            try:
                lines = open(path, errors="replace").read().strip().splitlines()
            except OSError:
                continue
            client_tails[os.path.basename(path)[len(os.path.basename(o)) + 1:-4]] = [l[-300:] for l in lines[-5:]]
        scen.append({
            **r,
            "wall_seconds": s.get("wall_seconds"), "train_seconds": s.get("train_seconds"),
            "eval_seconds": ev.get("seconds"),
            "top1": (ev.get("linear") or {}).get("top1"), "top5": (ev.get("linear") or {}).get("top5"),
            "mlp_top1": (ev.get("mlp") or {}).get("top1"),
            "random_init_top1": ((ev.get("random_init") or {}).get("linear") or {}).get("top1"),
            "rounds": [{"round": x.get("round"), "mean_loss": x.get("mean_loss"), "seconds": x.get("seconds"),
                        "clients": x.get("clients"), "loss": x.get("loss")} for x in rounds],
            "gpu_memory": mem, "gpu_memory_per_client_peak_mib": per_client,
            "coordinator_last_line": tail, "client_log_tails": client_tails, "summary": s,
        })
    comparisons = []
    for tag in dict.fromkeys(x["tag"] for x in scen):
        g = next((x for x in scen if x["tag"] == tag and x["role"] == "gpu"), None)
        c = next((x for x in scen if x["tag"] == tag and x["role"] == "cpu"), None)
        if not g or not c:
            continue
        loss_d = [abs(a["mean_loss"] - b["mean_loss"]) / abs(b["mean_loss"])
                  for a, b in zip(g["rounds"], c["rounds"])
                  if a.get("mean_loss") is not None and b.get("mean_loss")]
        comparisons.append({
            "scenario": tag,
            "top1_gpu": g["top1"], "top1_cpu": c["top1"],
            "top1_abs_diff": abs(g["top1"] - c["top1"]) if g["top1"] is not None and c["top1"] is not None else None,
            "round_mean_loss_max_rel_diff": max(loss_d) if loss_d else None,
            "wall_speedup": ratio(c["wall_seconds"], g["wall_seconds"]),
            "train_speedup": ratio(c["train_seconds"], g["train_seconds"]),
        })
    json.dump({"runs": scen, "gpu_vs_cpu": comparisons}, open(os.path.join(out, "scenarios.json"), "w"), indent=1)
    md.append("## Scenarios, GPU clients vs CPU clients, same seed\n")
    md.append("| scenario | leg | device | eval on | wall s | train s | eval s | linear top-1 | random-init top-1 | last-round loss | exit |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in scen:
        last = x["rounds"][-1]["mean_loss"] if x["rounds"] else None
        md.append(f"| {x['tag']} | {x['role']} | {x['device']} | {x['eval_device']} | {fmt(x['wall_seconds'])} | "
                  f"{fmt(x['train_seconds'])} | {fmt(x['eval_seconds'])} | {fmt(x['top1'], '.3f')} | "
                  f"{fmt(x['random_init_top1'], '.3f')} | {fmt(last, '.4f')} | {x['rc']} |")
    for cmp in comparisons:
        md.append(f"- {cmp['scenario']}: |top-1 GPU − CPU| = {fmt(cmp['top1_abs_diff'], '.3f')}; round mean losses "
                  f"within {fmt(cmp['round_mean_loss_max_rel_diff'], '.2e')} (relative); training {fmt(cmp['train_speedup'], '.2f')}x, "
                  f"wall {fmt(cmp['wall_speedup'], '.2f')}x faster on the GPU leg")
    md.append("")
    md.append("## GPU memory per client (nvidia-smi, peak MiB)\n")
    any_mem = False
    for x in scen:
        if x["gpu_memory"]:
            any_mem = True
            pc = x["gpu_memory_per_client_peak_mib"] or {}
            g = x["gpu_memory"]
            extra = ""
            if g.get("gpu_peak_mib") is not None and g.get("gpu_baseline_mib") is not None:
                extra = f"; whole GPU peak {g['gpu_peak_mib'] - g['gpu_baseline_mib']:.0f} MiB above its {g['gpu_baseline_mib']:.0f} MiB baseline"
            md.append(f"- {x['tag']} ({x['role']}): " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(pc.items())) or
                      f"per process (pids as nvidia-smi shows them): {g['per_pid_peak_mib']}") + extra)
    for k, m in sorted(bench_mem.items()):
        any_mem = True
        md.append(f"- bench_conv batch {k}: " + ", ".join(f"pid {p} {v:.0f}" for p, v in m["per_pid_peak_mib"].items()))
    if not any_mem:
        md.append("- not measured (no nvidia-smi" + (": dry run" if dry else "") + ")")
    md.append("")
    md.append("## Steps\n")
    md.append("| step | exit | seconds | note |\n|---|---|---|---|")
    for s in steps:
        md.append(f"| {s['step']} | {s['rc']} | {s['seconds']} | {s.get('note', '')} |")
    table = "\n".join(md) + "\n"
    open(os.path.join(out, "table.md"), "w").write(table)
    json.dump({"env": env, "steps": steps, "gpu_check_ok": gc.get("ok") if gc else None,
               "gpu_check_tasks": gc.get("tasks") if gc else None,
               "bench": rows, "scenarios_gpu_vs_cpu": comparisons,
               "scenarios": [{k: v for k, v in x.items() if k not in ("summary",)} for x in scen]},
              open(os.path.join(out, "results.json"), "w"), indent=1)
    print(table)


if __name__ == "__main__":
    main()
