# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpu_facts speed on 8 GPUs against the ``nvidia-smi --query-gpu`` call it replaces (goal: not slower).

Run: ``python bench/gpu_facts.py [--gpus sim/nvml/examples/8x-mixed.json] [--repeat 20] [--real]``.
Measured side by side, interleaved, in one run (median and best of --repeat):
  - ``nvidia-smi --query-gpu=<the same fields> --format=csv,noheader,nounits`` (one process, the bare baseline);
  - that nvidia-smi call run by ``ansible.builtin.command`` as Ansible runs it on the target (what a playbook
    without gpu_facts does: the fair baseline, since both then pay for Python and ansible's module_utils);
  - the gpu_facts module as Ansible runs it on the target (one Python process: interpreter start, imports, NVML
    queries, JSON out), without and with the container-runtime check;
  - the NVML collection alone, in this process (``gather_gpus``);
  - for reference, the whole ``ansible localhost -m gpufleet.vllm.gpu_facts`` and ``-m command -a 'nvidia-smi ...'``
    (controller start-up included).
Prints the ratios to both baselines and writes bench/out/gpu_facts.json.

By default both sides are the test bed's fakes (libnvidia-ml.so.1 from sim/nvml, nvidia-smi from sim/nvml/bin, a
Python script): the ratio then compares our code paths, not the driver. The real comparison needs a real GPU:
``--real`` uses the system's libnvidia-ml and nvidia-smi instead (run it on a GPU host).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / ".build" / "collections"
sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.facts import gather_gpus  # noqa: E402
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.smi import SMI_FIELDS  # noqa: E402

MODULE = ROOT / "plugins" / "modules" / "gpu_facts.py"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd[:3])} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default=str(ROOT / "sim" / "nvml" / "examples" / "8x-mixed.json"))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--ansible-repeat", type=int, default=3)
    parser.add_argument("--real", action="store_true", help="the system's NVML and nvidia-smi (needs a GPU)")
    args = parser.parse_args()

    env = dict(os.environ)
    env["PYTHONPATH"] = str(COLLECTIONS)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)
    env["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
    env.setdefault("ANSIBLE_PYTHON_INTERPRETER", sys.executable)
    if args.real:
        smi = shutil.which("nvidia-smi") or "/usr/bin/nvidia-smi"
        device = "real NVML and nvidia-smi"
    else:
        lib_dir = run(["bash", str(ROOT / "sim" / "nvml" / "build.sh")], env).stdout.strip().splitlines()[-1]
        env["LD_LIBRARY_PATH"] = f"{lib_dir}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
        env["GPUFLEET_FAKE_GPUS"] = str(Path(args.gpus).resolve())
        os.environ["GPUFLEET_FAKE_GPUS"] = env["GPUFLEET_FAKE_GPUS"]
        ctypes.CDLL(str(Path(lib_dir) / "libnvidia-ml.so.1"), mode=ctypes.RTLD_GLOBAL)  # pynvml here gets the fake
        smi = str(ROOT / "sim" / "nvml" / "bin" / "nvidia-smi")
        device = f"fake GPUs from {Path(args.gpus).name} (fake NVML library, fake nvidia-smi)"
    env["PATH"] = f"{Path(smi).parent}:{env.get('PATH', '')}"

    fields = ",".join(SMI_FIELDS.values())
    smi_cmd = [smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"]
    n_gpus = len(run(smi_cmd, env).stdout.strip().splitlines())
    tmp = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    arg_files = {}
    for name, margs in (
        ("module", {"container_runtime": False}),
        ("module_runtime", {"container_runtime": True}),
        ("command", {"argv": smi_cmd}),
    ):
        arg_files[name] = tmp / f"{name}.json"
        arg_files[name].write_text(json.dumps({"ANSIBLE_MODULE_ARGS": margs}))

    def module(name: str):
        out = run([sys.executable, str(MODULE), str(arg_files[name])], env).stdout
        facts = json.loads(out)["ansible_facts"]
        assert facts["gpu_source"] == "nvml" and facts["gpu_count"] == n_gpus, facts["gpu_source_reason"]

    cases = {
        "nvidia_smi_query_gpu": lambda: run(smi_cmd, env),
        "command_module_running_nvidia_smi": lambda: run(
            [sys.executable, "-m", "ansible.modules.command", str(arg_files["command"])], env
        ),
        "module_process": lambda: module("module"),
        "module_process_with_runtime_check": lambda: module("module_runtime"),
        "gather_in_process": lambda: gather_gpus("nvml"),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _run in range(args.repeat):  # interleaved, so drift hits every case alike
        for name, fn in cases.items():
            times[name].append(timed(fn))
    ansible_cmd = ["ansible", "localhost", "-m", "gpufleet.vllm.gpu_facts", "-a", "container_runtime=false"]
    command_cmd = ["ansible", "localhost", "-m", "command", "-a", " ".join(smi_cmd)]
    times["ansible_adhoc_gpu_facts"] = []
    times["ansible_adhoc_command_nvidia_smi"] = []
    for _run in range(args.ansible_repeat):
        times["ansible_adhoc_gpu_facts"].append(timed(lambda: run(ansible_cmd, env)))
        times["ansible_adhoc_command_nvidia_smi"].append(timed(lambda: run(command_cmd, env)))

    base = statistics.median(times["nvidia_smi_query_gpu"])
    fair = statistics.median(times["command_module_running_nvidia_smi"])
    rows = {}
    print(f"gpu_facts vs nvidia-smi --query-gpu, {n_gpus} GPUs, {device}; median / best of {args.repeat}")
    print(f"{'case':38} {'median ms':>10} {'best ms':>9} {'x nvidia-smi':>13} {'x command+smi':>14}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {
            "median_s": med,
            "best_s": min(ts),
            "runs": len(ts),
            "ratio_to_nvidia_smi": med / base,
            "ratio_to_command_module_nvidia_smi": med / fair,
        }
        print(f"{name:38} {med * 1000:10.1f} {min(ts) * 1000:9.1f} {med / base:13.2f} {med / fair:14.2f}")
    ratio = rows["module_process"]["ratio_to_command_module_nvidia_smi"]
    verdict = "not slower" if ratio <= 1.0 else "equal within 5%, the noise here" if ratio < 1.05 else "SLOWER"
    print(f"gpu_facts module / command module running nvidia-smi = {ratio:.2f} ({verdict}; goal <= 1.0)")
    print(
        f"gpu_facts module / bare nvidia-smi = {rows['module_process']['ratio_to_nvidia_smi']:.2f} "
        f"(the module pays Python + ansible module_utils start-up, "
        f"{rows['module_process']['median_s'] * 1000 - rows['gather_in_process']['median_s'] * 1000:.0f} ms here)"
    )
    if not args.real:
        print("note: both sides are fakes here; the real comparison needs a real GPU (run with --real there).")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_facts.json").write_text(
        json.dumps({"device": device, "gpus": n_gpus, "repeat": args.repeat, "cases": rows}, indent=2) + "\n"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
