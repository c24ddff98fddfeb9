#!/usr/bin/env python3
"""Offline GPU checks: every program skv builds for the NVIDIA, AMD and Intel profiles
(as `skv kernels` lists them, from the library's own build code) is compiled and linked
for the targets a Debian machine has compilers for:

  nvidia  nvptx64 (clang-15, libclc builtins linked), then ptxas sm_90 when present:
          no unresolved function, no spill in decode
  amd     gfx90a and gfx1100 (clang-15, libclc, ld.lld): links, i.e. no unresolved
          call; no spill in decode on gfx90a (gfx1100's spills are reported)
  intel   spir64 at -O0 (clang-14): no undefined function but OpenCL builtins, and the
          module converts with llvm-spirv-14 and passes spirv-val

Registers and spills per kernel go to --report (JSON) and a summary to stdout. A tool
that is missing skips its target with a message; when none can run the script exits 77
(CTest's skip code). Any failure exits 1 with the compiler's words.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys

CLC = "/usr/lib/clc"
DECODE_KERNELS = ("decode_gpu", "decode_cpu")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def tool(*names):
    for n in names:
        p = shutil.which(n) or (n if os.path.isabs(n) and os.access(n, os.X_OK) else None)
        if p:
            return p
    return None


def opencl_args(options):
    return options.split()


def nvptx(prog, work, tools):
    base = os.path.join(work, os.path.basename(prog["file"])[:-3])
    ptx = base + ".ptx"
    r = run([tools["clang15"], "-x", "cl", *opencl_args(prog["options"]), "-target", "nvptx64-unknown-nvidiacl",
             "-Xclang", "-finclude-default-header", "-O2", "-S", "-Xclang", "-mlink-builtin-bitcode", "-Xclang",
             os.path.join(CLC, "nvptx64--nvidiacl.bc"), "-o", ptx, prog["file"]])
    if r.returncode != 0:
        return {"error": "clang nvptx64: " + r.stderr[-2000:]}
    warnings = [l for l in r.stderr.splitlines() if "warning:" in l]
    if warnings:  # skv's kernels compile without a warning (one front end: checked here)
        return {"error": "clang nvptx64 warnings:\n" + "\n".join(warnings[:10])}
    with open(ptx) as f:
        text = f.read()
    externs = re.findall(r"^\.extern \.func[^(]*?(\w+)\s*\(", text, re.M)
    if externs:
        return {"error": "nvptx64: unresolved functions " + ", ".join(sorted(set(externs)))}
    out = {}
    if tools.get("ptxas"):
        r = run([tools["ptxas"], "-arch=sm_90", "-v", ptx, "-o", os.devnull])
        if r.returncode != 0:
            return {"error": "ptxas sm_90: " + r.stderr[-2000:]}
        kernel = None
        for line in r.stderr.splitlines():
            m = re.search(r"Function properties for (\w+)", line)
            if m:
                kernel = m.group(1)
                out.setdefault(kernel, {})
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and kernel:
                out[kernel].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            m = re.search(r"Used (\d+) registers", line)
            if m and kernel:
                out[kernel]["registers"] = int(m.group(1))
    return {"sm_90": out}


def amdgcn(prog, work, tools, cpu):
    base = os.path.join(work, os.path.basename(prog["file"])[:-3])
    # libclc-15 has no generic-address-space builtins (what OpenCL C 2.0 overloads pick;
    # ROCm's device libraries have them), so a CL2.0 program keeps calls to undefined
    # builtins, with a 16 KiB guessed stack each. The kernels use no 2.0 feature: they
    # are compiled as 1.2 here, every call resolved and the link complete.
    opts = [o if not o.startswith("-cl-std=CL2") else "-cl-std=CL1.2" for o in opencl_args(prog["options"])]
    r = run([tools["clang15"], "-x", "cl", *opts, "-target", "amdgcn-amd-amdhsa",
             "-mcpu=" + cpu, "-nogpulib", "-Xclang", "-finclude-default-header", "-O2", "-Xclang",
             "-mlink-builtin-bitcode", "-Xclang", os.path.join(CLC, "amdgcn--amdhsa.bc"),
             "-Wno-linker-warnings",  # libclc's triple is amdgcn-unknown-amdhsa: the same target
             "-Rpass-analysis=kernel-resource-usage", "-o", base + "." + cpu + ".co", prog["file"]])
    if r.returncode != 0:  # ld.lld names an unresolved call as "undefined hidden symbol"
        return {"error": cpu + ": " + "\n".join(l for l in r.stderr.splitlines() if "error" in l)[-2000:]}
    out, kernel = {}, None
    for line in r.stderr.splitlines():
        m = re.search(r"remark:\s+(Function Name|VGPRs|AGPRs|SGPRs|ScratchSize \[bytes/lane\]|VGPRs Spill|"
                      r"SGPRs Spill|LDS Size \[bytes/block\]|Occupancy \[waves/SIMD\]):\s+(\S+)", line)
        if not m:
            continue
        key, val = m.group(1), m.group(2)
        if key == "Function Name":
            kernel = val
            out[kernel] = {}
        elif kernel:
            out[kernel][key.split(" [")[0].lower().replace(" ", "_")] = int(val)
    return {cpu: out}


def spir64(prog, work, tools):
    base = os.path.join(work, os.path.basename(prog["file"])[:-3])
    bc = base + ".spir64.bc"
    r = run([tools["clang14"], "-x", "cl", *opencl_args(prog["options"]), "-target", "spir64", "-Xclang",
             "-finclude-default-header", "-O0", "-emit-llvm", "-c", "-o", bc, prog["file"]])
    if r.returncode != 0:
        return {"error": "clang spir64: " + r.stderr[-2000:]}
    r = run([tools["nm14"], "--undefined-only", bc])
    undefined = [l.split()[-1] for l in r.stdout.splitlines() if l.strip()]
    user = [n for n in undefined if not n.startswith("_Z") and not n.startswith("llvm.")]
    if r.returncode != 0 or user:
        return {"error": "spir64: undefined functions " + ", ".join(user) + r.stderr[-500:]}
    if tools.get("llvm_spirv"):
        spv = base + ".spv"
        r = run([tools["llvm_spirv"], bc, "-o", spv])
        if r.returncode != 0:
            return {"error": "llvm-spirv: " + r.stderr[-2000:]}
        if tools.get("spirv_val"):
            r = run([tools["spirv_val"], spv])
            if r.returncode != 0:
                return {"error": "spirv-val: " + (r.stderr + r.stdout)[-2000:]}
    return {"spir64": "ok"}


def check(profile, prog, work, tools):
    results = {}
    if profile == "nvidia":
        results.update(nvptx(prog, work, tools))
    elif profile == "amd":
        for cpu in ("gfx90a", "gfx1100"):
            res = amdgcn(prog, work, tools, cpu)
            if "error" in res:
                return res
            results.update(res)
    elif profile == "intel":
        results.update(spir64(prog, work, tools))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skv", required=True, help="the skv tool")
    ap.add_argument("--work", required=True, help="a scratch directory")
    ap.add_argument("--profiles", default="nvidia,amd,intel")
    ap.add_argument("--grid", default="", help="extra `skv kernels` options, e.g. '--head-dims 128'")
    ap.add_argument("--report", help="write registers and spills per program and kernel (JSON)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()

    tools = {"clang15": tool("clang-15"), "clang14": tool("clang-14"), "nm14": tool("llvm-nm-14"),
             "ptxas": tool("ptxas", "/usr/local/cuda/bin/ptxas"), "llvm_spirv": tool("llvm-spirv-14"),
             "spirv_val": tool("spirv-val")}
    have_clc = all(os.path.exists(os.path.join(CLC, f)) for f in ("nvptx64--nvidiacl.bc", "amdgcn--amdhsa.bc"))
    runnable = []
    for p in a.profiles.split(","):
        need = {"nvidia": ["clang15"], "amd": ["clang15"], "intel": ["clang14", "nm14"]}[p]
        missing = [t for t in need if not tools[t]] + ([] if p == "intel" or have_clc else ["libclc-15"])
        if missing:
            print(f"offline_gpu: SKIP {p}: missing {', '.join(missing)} (install clang-14, clang-15, libclc-15)")
        else:
            runnable.append(p)
    for t in ("ptxas", "llvm_spirv", "spirv_val"):
        if not tools[t]:
            print(f"offline_gpu: note: {t} not found, its step is skipped")
    if not runnable:
        return 77

    os.makedirs(a.work, exist_ok=True)
    report, failures, summary = {}, [], []
    for profile in runnable:
        pdir = os.path.join(a.work, profile)
        listing = os.path.join(a.work, profile + ".json")
        r = run([a.skv, "kernels", "--profile", profile, "--json", listing, "--source-dir", pdir, *a.grid.split()])
        if r.returncode != 0:
            print(f"offline_gpu: skv kernels --profile {profile} failed:\n{r.stderr}")
            return 1
        with open(listing) as f:
            progs = json.load(f)["programs"]
        with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
            results = list(ex.map(lambda p: check(profile, p, pdir, tools), progs))
        worst = {}
        for prog, res in zip(progs, results):
            tag = f"{profile} {prog['file']} ({prog['name']} {prog['options']})"
            if "error" in res:
                failures.append(f"{tag}:\n  {res['error']}")
                continue
            report.setdefault(profile, []).append({"name": prog["name"], "options": prog["options"], **res})
            for target, kernels in res.items():
                if not isinstance(kernels, dict):
                    continue
                for k, v in kernels.items():
                    # memory spills: ptxas's spill stores; AMD's VGPR spills and scratch (SGPR
                    # spills go to VGPR lanes, no memory: reported, not counted)
                    spills = v.get("spill_stores", 0) + v.get("vgprs_spill", 0) + v.get("scratchsize", 0)
                    regs = v.get("registers", v.get("vgprs", 0))
                    w = worst.setdefault((target, k), {"programs": 0, "max_regs": 0, "spilling": 0, "max_spill": 0,
                                                       "sgpr_spilling": 0})
                    w["programs"] += 1
                    w["max_regs"] = max(w["max_regs"], regs)
                    w["spilling"] += spills > 0
                    w["max_spill"] = max(w["max_spill"], spills)
                    w["sgpr_spilling"] += v.get("sgprs_spill", 0) > 0
                    if spills and k in DECODE_KERNELS and target in ("sm_90", "gfx90a"):
                        failures.append(f"{tag}: {k} spills on {target}: {v}")
        summary.append(f"{profile}: {len(progs)} programs, {sum('error' in r for r in results)} failed")
        for (target, k), w in sorted(worst.items()):
            summary.append(f"  {target:8} {k:15} {w['programs']:4} programs, max registers {w['max_regs']:4}, "
                           f"{w['spilling']:3} spill or use scratch (worst {w['max_spill']:5}), "
                           f"{w['sgpr_spilling']:3} spill SGPRs to VGPR lanes")
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)
    print("\n".join(summary))
    if failures:
        print(f"offline_gpu: {len(failures)} failures:")
        print("\n".join(failures[:40]))
        return 1
    print("offline_gpu: every program compiled and linked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
