#!/usr/bin/env python3
"""Benchmark: one worker against several (`--device cpu` vs `--device cpu,cpu`, or any two
device lists), same machine, same run, alternating processes. Each round starts `kiln serve` on
the demo models with one list, sends `--concurrent` identical SD requests at once, times until
the last answer, stops the server, and does the same with the other list.

    python3 benches/devices.py --kiln target/release/kiln                  # cpu vs cpu,cpu
    python3 benches/devices.py --a cuda:0 --b cuda:0,cuda:1 --size 512x512   # on a 2-GPU box

It prints each round's seconds, the medians, their ratio and the load average. On a CPU the
workers share one rayon pool (Burn flex), so two workers mostly interleave: the point of
`cpu,cpu` is the tests; on GPUs each worker has its own device.
Python 3.11 standard library only.
"""
import argparse, json, os, socket, statistics, subprocess, tempfile, threading, time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(base, body, timeout):
    req = urllib.request.Request(f"{base}/v1/images/generations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()
        return r.status


def one_round(kiln, devices, args):
    port, models = free_port(), tempfile.mkdtemp()
    proc = subprocess.Popen([kiln, "serve", "--offline", "--host", "127.0.0.1", "--port", str(port),
                             "--models-dir", models, "--device", devices, "--preload",
                             "--max-queue", str(args.concurrent + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() - t0 > 120:
                raise SystemExit(f"{devices}: not ready after 120 s")
            time.sleep(0.1)
        body = {"prompt": "a lighthouse", "size": args.size, "num_inference_steps": args.steps,
                "seed": 1}
        post(base, body, 600)  # warm-up: first-use allocations, kernel choices
        statuses = []
        threads = [threading.Thread(target=lambda: statuses.append(post(base, body, 600)))
                   for _ in range(args.concurrent)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - t0
        if statuses != [200] * args.concurrent:
            raise SystemExit(f"{devices}: statuses {statuses}")
        return secs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kiln", default="target/release/kiln")
    p.add_argument("--a", default="cpu")
    p.add_argument("--b", default="cpu,cpu")
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--size", default="128x128")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    times = {args.a: [], args.b: []}
    for r in range(args.rounds):
        for devices in (args.a, args.b) if r % 2 == 0 else (args.b, args.a):
            secs = one_round(args.kiln, devices, args)
            times[devices].append(secs)
            print(f"round {r + 1}: --device {devices}: {args.concurrent} requests in {secs:.2f} s", flush=True)
    med = {d: statistics.median(t) for d, t in times.items()}
    print(f"median: --device {args.a} {med[args.a]:.2f} s, --device {args.b} {med[args.b]:.2f} s, "
          f"ratio {med[args.a] / med[args.b]:.2f}x; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
