#!/usr/bin/env python3
"""Local object store vs. Ray's object store, in one run, on this machine.

    /root/.cache/ray-venv/bin/python bench/ray_vs_store.py          # table
    /root/.cache/ray-venv/bin/python bench/ray_vs_store.py --json   # machine-readable

(a) Starts `target/release/store-daemon` on a unix socket in a fresh temporary directory
    (no --scheduler, so no QUIC endpoint; no metrics listener) and runs
    `target/release/storectl --socket ... bench --json` with the options below: 1 KiB put
    and get calls/s, get latency p50/p99 of 1 KiB and of the large object, put of the large
    object from memory and from a cached file (median of --repeats), and the references the
    bench measures in the same run (write() into a fresh memfd, memcpy into pre-faulted
    memory, page-cache read, bare unix-socket round trips).
(b) Stops the daemon, then, if `ray` is importable by --ray-python (default: this
    interpreter), runs Ray's versions of the same cases in a child process (in a network
    namespace of its own with only lo, when `unshare` works), the way
    `ray microbenchmark` (ray/_private/ray_perf.py) does them: ray.init() on this node only
    (127.0.0.1, no dashboard, usage stats off), `ray.put` of a 1 KiB numpy array calls/s,
    `ray.get` of a 1 KiB object ref calls/s, ray.get latency p50/p99 of the 1 KiB and of the
    large numpy array, `ray.put` of the large numpy array in GB/s (median of --repeats).
(c) Prints both side by side with store / Ray ratios, the versions (python, ray, numpy),
    the CPU model and the load average.

Store and Ray never run at the same time. Only unix sockets and loopback are used.
Timing conventions follow `storectl bench`: calls/s = calls in a --seconds window / its
length; GB/s = bytes / seconds / 1e9; latency = one get call until the first byte is
readable. Ray's calls/s cases get a 1 s warm-up first (as `ray microbenchmark` does; the
store's do not), which can only favour Ray.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIB = 1024
GIB = 1 << 30


def parse_size(text):
    """'1GiB', '16MiB', '1024' -> bytes (binary units, as storectl's bytesize)."""
    t = text.strip()
    units = {"": 1, "b": 1, "kib": KIB, "kb": 1000, "mib": KIB**2, "mb": 1000**2, "gib": GIB, "gb": 1000**3}
    i = len(t)
    while i > 0 and not (t[i - 1].isdigit() or t[i - 1] == "."):
        i -= 1
    number, unit = t[:i], t[i:].strip().lower()
    if unit not in units:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(float(number) * units[unit])


def human_size(n):
    for unit, size in (("GiB", GIB), ("MiB", KIB**2), ("KiB", KIB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------- machine facts


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rustc_count():
    try:
        out = subprocess.run(["pgrep", "-c", "-x", "rustc"], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def git_commit():
    """HEAD, with '+dirty' when store-client/, storectl/ or store-daemon/ differ from it (the
    binaries are built from the working tree)."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True, timeout=10).stdout
        head = run("rev-parse", "--short", "HEAD").strip()
        dirty = run("status", "--porcelain", "--", "store-client", "storectl", "store-daemon", "Cargo.toml", "Cargo.lock").strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def file_info(path):
    st = os.stat(path)
    return {"path": os.path.relpath(path, REPO),
            "mtime_utc": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")}


def machine():
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "loadavg_start": list(os.getloadavg()),
        "rustc_processes_start": rustc_count(),
        "git_commit": git_commit(),
    }


# ---------------------------------------------------------------- (a) the store


def clean_env():
    """The environment without STORE_* settings (they would configure the daemon: a
    scheduler, a QUIC or metrics listener, S3)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STORE_")}


def wait_for_socket(path, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"store-daemon exited with status {proc.returncode} before listening")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise RuntimeError(f"store-daemon did not listen on {path} within {timeout} s")


def run_store(args, tmp):
    daemon = os.path.join(REPO, args.target_dir, "store-daemon")
    storectl = os.path.join(REPO, args.target_dir, "storectl")
    for exe in (daemon, storectl):
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"{exe} is missing: build it with "
                             "`cargo build --release -p store-daemon -p storectl --bins`")
    sock = os.path.join(tmp, "s.sock")
    daemon_cmd = [daemon, "--socket", sock, "--capacity", args.capacity]
    bench_cmd = [storectl, "--socket", sock, "bench", "--json",
                 "--large-size", f"{args.large_size}B", "--seconds", str(args.seconds),
                 "--repeats", str(args.repeats), "--latency-iterations", str(args.latency_iterations),
                 "--scratch-dir", tmp]
    env = clean_env()
    env.setdefault("STORE_LOG", "warn")
    log_path = os.path.join(tmp, "store-daemon.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(daemon_cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_socket(sock, proc, 15)
        progress("store: " + " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in bench_cmd))
        t0 = time.monotonic()
        out = subprocess.run(bench_cmd, capture_output=True, text=True, env=clean_env(), timeout=args.store_timeout)
        elapsed = time.monotonic() - t0
        if out.returncode != 0:
            raise RuntimeError(f"storectl bench failed ({out.returncode}):\n{out.stderr[-3000:]}")
        report = json.loads(out.stdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    version = subprocess.run([storectl, "--version"], capture_output=True, text=True).stdout.strip()
    short = lambda c: [os.path.relpath(x, REPO) if x.startswith(REPO) else x for x in c]
    return {
        "daemon_command": " ".join(short(daemon_cmd)),
        "bench_command": " ".join(short(bench_cmd)),
        "storectl_version": version,
        "binaries": [file_info(daemon), file_info(storectl)],
        "seconds": round(elapsed, 1),
        "report": report,
    }


# ---------------------------------------------------------------- (b) Ray, in a child process


def ray_child(cfg):
    """Runs in the child: Ray's cases. Prints one JSON object on stdout."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import numpy as np
    import ray

    out = {"ray": ray.__version__, "numpy": np.__version__, "python": platform.python_version()}
    large_size = cfg["large_size"]
    seconds = cfg["seconds"]
    t_init = time.perf_counter()
    ray.init(num_cpus=cfg["num_cpus"], object_store_memory=cfg["object_store_memory"], include_dashboard=False,
             _node_ip_address="127.0.0.1", _temp_dir=cfg["temp_dir"], log_to_driver=False,
             configure_logging=True, logging_level="warning")
    out["init_seconds"] = time.perf_counter() - t_init
    out["object_store_memory"] = cfg["object_store_memory"]
    out["num_cpus"] = cfg["num_cpus"]

    def calls_per_second(fn, warmup=1.0):
        start = time.perf_counter()
        while time.perf_counter() - start < warmup:
            fn()
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            n += 1
        return n / (time.perf_counter() - start)

    def latency(ref, iterations, budget):
        samples = []
        deadline = time.perf_counter() + budget
        for _ in range(iterations):
            t = time.perf_counter()
            v = ray.get(ref)
            v[0]  # readable: the first byte is loaded
            samples.append((time.perf_counter() - t) * 1e6)
            del v
            if time.perf_counter() > deadline:
                break
        samples.sort()
        pick = lambda p: samples[round((len(samples) - 1) * p)]
        return {"p50_us": pick(0.5), "p99_us": pick(0.99), "iterations": len(samples)}

    rng = np.random.default_rng(12345)
    small = np.frombuffer(rng.bytes(KIB), dtype=np.uint8)

    print("ray: put calls/s (1 KiB numpy array)", file=sys.stderr, flush=True)
    out["put_calls_1k"] = calls_per_second(lambda: ray.put(small))

    ref_small = ray.put(small)
    print("ray: get calls/s (1 KiB)", file=sys.stderr, flush=True)
    out["get_calls_1k"] = calls_per_second(lambda: ray.get(ref_small))
    print("ray: get latency (1 KiB)", file=sys.stderr, flush=True)
    out["get_latency_1k"] = latency(ref_small, cfg["latency_iterations"], 20.0)

    print(f"ray: preparing the {human_size(large_size)} array", file=sys.stderr, flush=True)
    big = np.frombuffer(rng.bytes(large_size), dtype=np.uint8)
    print(f"ray: put GB/s ({human_size(large_size)} numpy array)", file=sys.stderr, flush=True)
    puts = []
    for _ in range(cfg["repeats"]):
        t = time.perf_counter()
        ref = ray.put(big)
        puts.append(large_size / (time.perf_counter() - t) / 1e9)
        del ref
        time.sleep(0.2)  # let the store free it (asynchronous) before the next one
    out["put_gbps_large_all"] = puts
    out["put_gbps_large"] = statistics.median(puts)

    ref_big = ray.put(big)
    del big
    print(f"ray: get latency ({human_size(large_size)})", file=sys.stderr, flush=True)
    out["get_latency_large"] = latency(ref_big, cfg["latency_iterations"], 20.0)
    del ref_big
    ray.shutdown()
    print(json.dumps(out))


NETNS_PREFIX = (["unshare", "--net", "--"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net", "--"]) \
    + ["sh", "-c"]


def netns_works():
    try:
        return subprocess.run(NETNS_PREFIX + ["ip link set lo up"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_ray(args, tmp):
    python = args.ray_python or sys.executable
    probe = subprocess.run([python, "-c", "import ray, numpy; print(ray.__version__, numpy.__version__)"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return {"available": False, "python": python, "reason": reason}
    ray_tmp = os.path.join(tmp, "ray")
    os.makedirs(ray_tmp, exist_ok=True)
    cfg = {
        "large_size": args.large_size,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "latency_iterations": args.latency_iterations,
        "num_cpus": args.ray_num_cpus,
        "object_store_memory": parse_size(args.capacity),
        "temp_dir": ray_tmp,
    }
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    progress(f"ray: {python} (ray.init on 127.0.0.1, object store {args.capacity}, num_cpus {args.ray_num_cpus})")
    t0 = time.monotonic()
    child = [python, os.path.abspath(__file__), "--ray-child", json.dumps(cfg)]
    netns = not args.ray_host_network and netns_works()
    if netns:
        # Ray's gRPC servers (gcs_server, raylet, workers, agents) bind the wildcard address
        # whatever the node IP; in a network namespace of its own, whose only interface is
        # lo, everything they listen on is loopback. (Plasma itself is a unix socket.)
        child = NETNS_PREFIX + ['ip link set lo up && exec "$0" "$@"'] + child
    else:
        progress("warning: Ray runs in the host network namespace (its gRPC servers bind the wildcard address)")
    # A new session, so that whatever Ray leaves behind can be ended as one process group.
    proc = subprocess.Popen(child,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.ray_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return {"available": True, "python": python, "error": f"timed out after {args.ray_timeout} s",
                "stderr": stderr[-3000:]}
    finally:
        try:  # Ray's own processes (raylet, gcs_server, workers) share the child's session
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    elapsed = time.monotonic() - t0
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"available": True, "python": python, "error": f"exit status {proc.returncode}",
                "stderr": stderr[-3000:]}
    result = json.loads(lines[-1])
    result.update({"available": True, "python_executable": python, "seconds": round(elapsed, 1),
                   "network": "own network namespace, lo only" if netns else "host network namespace"})
    return result


# ---------------------------------------------------------------- (c) the comparison


def find(items, prefix):
    for it in items:
        if it["name"].startswith(prefix):
            return it
    return None


def compare(store, ray, large_size):
    """Rows: (case, unit, store value, ray value or None, 'higher'/'lower' is better)."""
    rep = store["report"]
    res, lat = rep["results"], rep["latencies"]
    big = human_size(large_size)

    def v(prefix):
        it = find(res, prefix)
        return it["value"] if it else None

    r = ray if ray and "put_calls_1k" in ray else None
    rows = [
        ("put+seal calls/s, 1 client, 1 KiB", "calls/s", v("put+seal calls/s"), r and r["put_calls_1k"], "higher"),
        ("get calls/s, 1 client, 1 KiB", "calls/s", v("get calls/s, 1 client"), r and r["get_calls_1k"], "higher"),
        ("get latency p50, 1 KiB", "us", lat[0]["p50_us"], r and r["get_latency_1k"]["p50_us"], "lower"),
        ("get latency p99, 1 KiB", "us", lat[0]["p99_us"], r and r["get_latency_1k"]["p99_us"], "lower"),
        (f"get latency p50, {big}", "us", lat[-1]["p50_us"], r and r["get_latency_large"]["p50_us"], "lower"),
        (f"get latency p99, {big}", "us", lat[-1]["p99_us"], r and r["get_latency_large"]["p99_us"], "lower"),
        (f"put {big} from memory (median of reps)", "GB/s", v("put GB/s from memory"), r and r["put_gbps_large"],
         "higher"),
    ]
    out = []
    for case, unit, s, ry, better in rows:
        out.append({"case": case, "unit": unit, "store": s, "ray": ry, "better": better,
                    "store_over_ray": (s / ry) if (s is not None and ry) else None})
    return out


def fmt(value, unit):
    if value is None:
        return "-"
    if unit == "calls/s":
        return f"{value:,.0f}"
    if unit == "GB/s":
        return f"{value:.2f}"
    if unit == "us":
        return f"{value:,.1f}"
    return f"{value:.2f}"


def print_table(result):
    m, store, ray = result["machine"], result["store"], result["ray"]
    rep = store["report"]
    print(f"\n{m['date_utc']}  CPU: {m['cpu_model']} ({m['cpus']} CPUs), Linux {m['kernel']}, "
          f"load avg at start {m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f}, "
          f"rustc processes at start {m['rustc_processes_start']}, at end {m['rustc_processes_end']}")
    ray_name = f"Ray {ray['ray']}" if ray.get("ray") else "Ray"
    print(f"python {m['python']}" + (f", ray {ray['ray']}, numpy {ray['numpy']} ({ray['python_executable']})"
                                     if ray.get("ray") else ""))
    print(f"store: {store['daemon_command']}\n       {store['bench_command']}   [{store['storectl_version']}, "
          f"commit {m['git_commit']}]")
    if not ray.get("available"):
        print(f"\nRay: not importable by {ray.get('python')} ({ray.get('reason')}); the store's figures only.")
    elif "error" in ray:
        print(f"\nRay: failed ({ray['error']}); the store's figures only.\n{ray.get('stderr', '')}")
    else:
        print(f"ray:   ray.init(num_cpus={ray['num_cpus']}, object_store_memory={human_size(ray['object_store_memory'])},"
              f" 127.0.0.1, no dashboard, {ray['network']}); init took {ray['init_seconds']:.1f} s")
    print()
    w = 40
    print(f"{'case':<{w}} {'unit':>8} {'store':>12} {ray_name:>12} {'store/Ray':>10}  better")
    for row in result["comparison"]:
        ratio = "-" if row["store_over_ray"] is None else f"{row['store_over_ray']:.2f}"
        print(f"{row['case']:<{w}} {row['unit']:>8} {fmt(row['store'], row['unit']):>12} "
              f"{fmt(row['ray'], row['unit']):>12} {ratio:>10}  {row['better']}")
    print("\nstore only, same run:")
    for it in rep["results"]:
        if it["name"].startswith(("get calls/s, 4", "put GB/s from a cached")):
            print(f"  {it['name']:<60} {fmt(it['value'], it['unit']):>10} {it['unit']}")
    print("references, same run (storectl bench):")
    for it in rep["references"]:
        print(f"  {it['name']:<60} {fmt(it['value'], it['unit']):>10} {it['unit']}")
    for it in rep["ratios"]:
        print(f"  ratio {it['name']:<54} {it['value']:>10.2f}")
    if ray.get("put_gbps_large_all"):
        print(f"Ray put {human_size(result['large_size'])} each rep, in order (GB/s): "
              + ", ".join(f"{x:.2f}" for x in ray["put_gbps_large_all"])
              + "  (a put into arena pages plasma has not touched yet is slow; later ones may reuse touched pages)")
    print(f"\nstore part {store['seconds']} s, Ray part {ray.get('seconds', '-')} s, total {result['seconds']} s")


def progress(msg):
    print(f"[ray_vs_store] {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per calls/s case (default 2)")
    ap.add_argument("--large-size", type=parse_size, default=GIB, help="large object size (default 1GiB)")
    ap.add_argument("--repeats", type=int, default=5, help="reps of each large put, median reported (default 5)")
    ap.add_argument("--latency-iterations", type=int, default=2000, help="gets per latency case (default 2000)")
    ap.add_argument("--capacity", default="4GiB", help="store-daemon --capacity and Ray's object_store_memory")
    ap.add_argument("--target-dir", default="target/release", help="where store-daemon and storectl are")
    ap.add_argument("--ray-python", help="interpreter that imports ray (default: this one)")
    ap.add_argument("--ray-num-cpus", type=int, default=1, help="ray.init(num_cpus=...) (default 1)")
    ap.add_argument("--no-ray", action="store_true", help="the store's figures only")
    ap.add_argument("--ray-host-network", action="store_true",
                    help="run Ray in the host network namespace (default: its own, with only lo, when unshare works)")
    ap.add_argument("--store-timeout", type=float, default=150, help="seconds before storectl bench is abandoned")
    ap.add_argument("--ray-timeout", type=float, default=150, help="seconds before the Ray part is abandoned")
    ap.add_argument("--ray-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ray_child:
        ray_child(json.loads(args.ray_child))
        return

    t0 = time.monotonic()
    result = {"machine": machine(), "large_size": args.large_size}
    tmp = tempfile.mkdtemp(prefix="rvs-")
    try:
        result["store"] = run_store(args, tmp)
        if args.no_ray:
            result["ray"] = {"available": False, "python": None, "reason": "--no-ray"}
        else:
            result["ray"] = run_ray(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ray = result["ray"]
    if ray.get("available") and "error" not in ray:
        result["machine"].update({"ray": ray["ray"], "numpy": ray["numpy"]})
    elif not ray.get("available"):
        progress(f"ray is not importable ({ray.get('reason')}): the store's figures only")
    result["comparison"] = compare(result["store"], ray, args.large_size)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["machine"]["rustc_processes_end"] = rustc_count()
    result["seconds"] = round(time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    if ray.get("available") and "error" in ray:
        sys.exit(1)


if __name__ == "__main__":
    main()
