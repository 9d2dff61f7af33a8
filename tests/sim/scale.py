#!/usr/bin/env python3
"""A scaled deployment on one machine: three `kiln serve` replicas (demo models) behind a
client that balances like a load balancer, sharing one `--image-store dir:`. Mid-load one
replica gets SIGTERM (a rolling restart) and comes back on the same port. Asserts: no request
is lost, the drained replica exits 0 within its grace, every `url` link resolves on every
replica, queues end empty, and each live process's /metrics agrees with what the client saw.

    python3 tests/sim/scale.py --kiln target/release/kiln [--clients 6] [--requests 60]

Python 3.11 standard library only. Exits non-zero, with the reason, on any failed check.
"""
import argparse, atexit, base64, http.client, json, signal, socket, statistics, subprocess
import os, re, sys, tempfile, threading, time, urllib.request
from collections import Counter

PNG = b"\x89PNG\r\n\x1a\n"
RESPONSE_GRACE = 10  # src/cli/serve.rs: time for responses after the jobs, before exit
PROCS = []  # every child ever started: killed on any exit


def kill_all():
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()


atexit.register(kill_all)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=10):
    """(status, body) or (None, error name)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, type(e).__name__


def metrics(port):
    """{(name, frozenset(labels)): value} from /metrics, or None when it does not answer."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        return None
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = [kv.split("=", 1) for kv in labels.rstrip("}").split(",") if "=" in kv]
        out[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


def total(m, name, **want):
    return sum(v for (n, ls), v in m.items()
               if n == name and all((k, w) in ls for k, w in want.items()))


def in_flight(m):
    return total(m, "kiln_queue_waiting") + total(m, "kiln_queue_running")


class Replica:
    def __init__(self, idx, args, store, logdir):
        self.idx, self.args, self.store, self.logdir = idx, args, store, logdir
        self.port, self.life, self.proc, self.spawned = free_port(), -1, None, []

    def start(self):
        self.life += 1
        self.log = f"{self.logdir}/replica{self.idx}-life{self.life}.log"
        models = tempfile.mkdtemp(dir=self.logdir)  # empty: the demo models are served
        cmd = [self.args.kiln, "serve", "--offline", "--host", "127.0.0.1",
               "--port", str(self.port), "--models-dir", models,
               "--image-store", f"dir:{self.store}", "--max-queue", "4",
               "--shutdown-grace-secs", str(self.args.grace)]
        self.spawned.append(time.monotonic())
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        PROCS.append(self.proc)

    def wait_ready(self, limit=60):
        t0 = time.monotonic()
        while http_get(self.port, "/health/ready", 2)[0] != 200:
            check(self.proc.poll() is None,
                  f"replica {self.idx} exited with {self.proc.returncode} while starting")
            check(time.monotonic() - t0 < limit, f"replica {self.idx} not ready in {limit} s")
            time.sleep(0.1)

    def life_at(self, t):
        """Which life an attempt that started at monotonic time t reached."""
        return max((i for i, s in enumerate(self.spawned) if s <= t), default=0)


class Sim:
    def __init__(self, args, replicas):
        self.args, self.reps = args, replicas
        self.lock = threading.Lock()
        self.next_req = 0
        self.rr = 0
        self.attempts = []  # (replica, life, status or error, t_start, t_end, rid)
        self.latencies, self.urls, self.failures = [], [], []
        self.retries = Counter()
        self.term_at = None  # monotonic time of the SIGTERM

    def take(self):
        with self.lock:
            i, self.next_req = self.next_req, self.next_req + 1
            r, self.rr = self.rr, (self.rr + 1) % len(self.reps)
            return (i, r) if i < self.args.requests else (None, None)

    def attempt(self, rep, payload, rid, timeout):
        conn = http.client.HTTPConnection("127.0.0.1", rep.port, timeout=timeout)
        try:
            try:
                conn.connect()
            except OSError as e:
                return type(e).__name__, None, b""
            try:
                conn.request("POST", "/v1/images/generations", body=payload,
                             headers={"Content-Type": "application/json", "X-Request-Id": rid})
                resp = conn.getresponse()
                return resp.status, resp.headers, resp.read()
            except (OSError, http.client.HTTPException) as e:
                return "after_send:" + type(e).__name__, None, b""
        finally:
            conn.close()

    def one(self, i, r):
        fmt = "b64_json" if i % 4 == 3 else "url"
        payload = json.dumps({"prompt": f"a red cube number {i}", "size": "64x64",
                              "num_inference_steps": self.args.steps, "response_format": fmt, "n": 1})
        t0 = time.monotonic()
        deadline = t0 + self.args.deadline
        for k in range(10_000):
            left = deadline - time.monotonic()
            if left <= 0:
                with self.lock:
                    self.failures.append(f"request {i}: lost (no 200 in {self.args.deadline} s)")
                return
            rep, rid = self.reps[r], f"sim-{i}-{k}"
            ta = time.monotonic()
            status, headers, body = self.attempt(rep, payload, rid, left)
            te = time.monotonic()
            with self.lock:
                self.attempts.append((r, rep.life_at(ta), status, ta, te, rid))
            if status == 200:
                try:
                    data = json.loads(body)["data"]
                    check(len(data) == 1, f"{len(data)} images")
                    if fmt == "url":
                        url = data[0]["url"]
                        check(url.startswith(f"http://127.0.0.1:{rep.port}/v1/images/files/"), url)
                    else:
                        check(base64.b64decode(data[0]["b64_json"]).startswith(PNG), "not a PNG")
                except (Fail, KeyError, ValueError) as e:
                    with self.lock:
                        self.failures.append(f"request {i} ({rid}): bad 200 body: {e}")
                    return
                with self.lock:
                    self.latencies.append(te - t0)
                    if fmt == "url":
                        self.urls.append(url.split("/v1/images/files/", 1)[1])
                return
            if status in (429, 503):
                try:
                    code = json.loads(body)["error"]["code"]
                except (KeyError, TypeError, ValueError):
                    code = "?"
                with self.lock:
                    self.retries[f"{status} {code}"] += 1
                try:
                    wait = float(headers.get("Retry-After", "1"))
                except ValueError:
                    wait = 1.0
                time.sleep(min(wait, self.args.retry_cap))
            elif isinstance(status, str):  # refused, reset: the next replica, after a breath
                with self.lock:
                    self.retries[status] += 1
                time.sleep(0.05)
            else:
                with self.lock:
                    self.failures.append(f"request {i} ({rid}) on replica {r}: {status} {body[:300]!r}")
                return
            r = (r + 1) % len(self.reps)

    def worker(self):
        while True:
            i, r = self.take()
            if i is None:
                return
            self.one(i, r)

    def restart(self, rep, report):
        """SIGTERM `rep` mid-load, once it has jobs, watch its drain, start it again."""
        while self.next_req < self.args.requests // 3:
            time.sleep(0.05)
        t0, m = time.monotonic(), None
        while time.monotonic() - t0 < 20:
            m = metrics(rep.port)
            if m and in_flight(m) > 0:
                break
            time.sleep(0.05)
        report["in_flight_at_sigterm"] = in_flight(m) if m else None
        report["completed_before_sigterm"] = total(m, "kiln_jobs_total", outcome="completed") if m else None
        self.term_at = time.monotonic()
        rep.proc.send_signal(signal.SIGTERM)
        ready_seen, last = None, m
        while rep.proc.poll() is None:
            check(time.monotonic() - self.term_at < self.args.grace + RESPONSE_GRACE + 20,
                  f"replica {rep.idx} did not exit within its grace after SIGTERM")
            if ready_seen is None:  # the signal reaches the server a moment after kill()
                r = http_get(rep.port, "/health/ready", 2)
                if r[0] is not None and r[0] != 200:
                    ready_seen = r
                check(r[0] != 200 or time.monotonic() - self.term_at < 2,
                      f"replica {rep.idx}: /health/ready still 200 2 s after SIGTERM")
                if r[0] == 200:
                    continue
            last = metrics(rep.port) or last
            time.sleep(0.05)
        report["drain_s"] = time.monotonic() - self.term_at
        report["exit_code"] = rep.proc.returncode
        report["completed_last_scrape"] = total(last, "kiln_jobs_total", outcome="completed") if last else None
        report["ready_while_draining"] = ready_seen
        rep.start()
        rep.wait_ready()
        report["ready_at"] = time.monotonic()
        report["down_s"] = report["ready_at"] - self.term_at


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--steps", type=int, default=3, help="num_inference_steps per request")
    ap.add_argument("--deadline", type=float, default=120, help="seconds per request, retries included")
    ap.add_argument("--retry-cap", type=float, default=1.0, help="longest Retry-After honoured")
    ap.add_argument("--grace", type=int, default=60, help="--shutdown-grace-secs")
    ap.add_argument("--max-runtime", type=float, default=300)
    args = ap.parse_args()
    wall0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kiln-scale-") as tmp:
        reps = [Replica(i, args, f"{tmp}/store", tmp) for i in range(3)]
        try:
            run(args, reps, wall0)
        except Fail as e:
            for rep in reps:
                try:
                    text = re.sub(r"\x1b\[[0-9;]*m", "", open(rep.log, errors="replace").read())
                    tail = text.splitlines()[-15:]
                except OSError:
                    tail = []
                print(f"--- replica {rep.idx} life {rep.life} log tail ---", *tail, sep="\n", file=sys.stderr)
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
        finally:
            kill_all()
    print(f"OK in {time.monotonic() - wall0:.1f} s")
    return 0


def run(args, reps, wall0):
    for rep in reps:
        rep.start()
    for rep in reps:
        rep.wait_ready()
    sim, report = Sim(args, reps), {}
    victim = reps[1]
    load0 = time.monotonic()
    threads = [threading.Thread(target=sim.worker, daemon=True) for _ in range(args.clients)]
    errors = []

    def restarter():
        try:
            sim.restart(victim, report)
        except Fail as e:
            errors.append(str(e))
    threads.append(threading.Thread(target=restarter, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            check(time.monotonic() - wall0 < args.max_runtime,
                  f"over the {args.max_runtime:.0f} s bound (requests sent: {sim.next_req})")
            t.join(0.5)
    load_s = time.monotonic() - load0
    check(not errors, "; ".join(errors))

    # the drain
    check(report.get("exit_code") == 0, f"the drained replica exited with {report.get('exit_code')}")
    check(report["drain_s"] <= args.grace + RESPONSE_GRACE,
          f"the drain took {report['drain_s']:.1f} s, over the {args.grace} s grace")
    # a drain of a few jobs can end before a probe gets in; when one did, it saw 503 draining
    ready = report["ready_while_draining"]
    check(ready is None or (ready[0] == 503 and b'"draining"' in ready[1]),
          f"/health/ready while draining: {ready}")
    # transport errors: fine on the restarted replica from its SIGTERM until it was ready
    # again (its listener closing, nothing listening, the new one binding); anywhere else a
    # request the server had accepted got no answer
    dropped = [a for a in sim.attempts if isinstance(a[2], str) and
               not (a[0] == victim.idx and sim.term_at <= a[3] <= report["ready_at"])]
    check(not dropped, f"connections dropped without an answer: {dropped[:5]}")
    # A job cancelled by the drain answers 503 `shutting_down` (or `cancelled`), as a refused
    # new request does; the client's retry hides it. An attempt sent to the drained replica
    # half a second before its SIGTERM and still open at it had been read and queued: it must
    # get its image.
    cut = [a for a in sim.attempts if a[0] == victim.idx and a[1] == 0
           and a[3] <= sim.term_at - 0.5 < sim.term_at < a[4] and a[2] != 200]
    check(not cut and sim.retries["503 cancelled"] == 0,
          f"the drain ({report['drain_s']:.1f} s of a {args.grace} s grace) cut accepted jobs: "
          f"{cut[:5]}; 503 cancelled: {sim.retries['503 cancelled']}")
    check(not sim.failures, f"{len(sim.failures)} requests failed: " + "; ".join(sim.failures[:5]))
    check(len(sim.latencies) == args.requests,
          f"{len(sim.latencies)} of {args.requests} requests got a 200")

    # every link from every replica
    for rep in reps:
        for img in sim.urls:
            status, body = http_get(rep.port, f"/v1/images/files/{img}")
            check(status == 200 and body.startswith(PNG),
                  f"replica {rep.idx} does not serve {img}: {status}")

    # metrics of the processes alive now against what the client saw from them
    seen = Counter((a[0], a[1], a[2]) for a in sim.attempts)
    gauges = []
    for rep in reps:
        t0 = time.monotonic()
        while True:
            m = metrics(rep.port)
            check(m is not None, f"replica {rep.idx}: /metrics does not answer")
            if in_flight(m) == 0 or time.monotonic() - t0 > 10:
                break
            time.sleep(0.2)
        check(in_flight(m) == 0, f"replica {rep.idx}: {in_flight(m)} jobs still queued or running")
        gauges.append(int(total(m, "kiln_image_store_images")))
        done = total(m, "kiln_jobs_total", outcome="completed")
        check(done == seen[(rep.idx, rep.life, 200)],
              f"replica {rep.idx} life {rep.life}: kiln_jobs_total completed {done:.0f}, "
              f"the client got {seen[(rep.idx, rep.life, 200)]} images from it")
        for status in (200, 429, 503):
            n = total(m, "kiln_http_requests_total", endpoint="/v1/images/generations", status=str(status))
            check(n == seen[(rep.idx, rep.life, status)],
                  f"replica {rep.idx} life {rep.life}: kiln_http_requests_total {{status={status}}} "
                  f"{n:.0f}, the client saw {seen[(rep.idx, rep.life, status)]}")
    current = sum(seen[(rep.idx, rep.life, 200)] for rep in reps)
    check(current + seen[(victim.idx, 0, 200)] == args.requests,
          f"200s by life do not add up: {current} from the live processes, "
          f"{seen[(victim.idx, 0, 200)]} from the drained one, {args.requests} requests")
    old_ok = seen[(victim.idx, 0, 200)]
    last = report["completed_last_scrape"]
    check(last is None or last <= old_ok,
          f"the drained life reported {last:.0f} completed jobs, the client got {old_ok}")
    drained = sum(1 for a in sim.attempts if a[0] == victim.idx and a[1] == 0 and a[2] == 200
                  and a[3] < sim.term_at < a[4])

    lat = sorted(sim.latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    print(f"requests {args.requests} ({len(sim.urls)} url, {args.requests - len(sim.urls)} b64_json) "
          f"from {args.clients} clients over 3 replicas: all 200")
    print(f"attempts {len(sim.attempts)}; retries {dict(sim.retries) or 0}")
    print(f"load {load_s:.1f} s, throughput {args.requests / load_s:.2f} req/s; latency "
          f"p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {lat[-1]:.2f} s")
    print(f"restart of replica {victim.idx}: {report['in_flight_at_sigterm']} jobs in flight at "
          f"SIGTERM, {drained} answered 200 during the drain, exit {report['exit_code']} after "
          f"{report['drain_s']:.1f} s (/health/ready then: "
          f"{'not caught' if ready is None else ready[0]}), ready again {report['down_s']:.1f} s after SIGTERM; "
          f"old life: {old_ok} images (last scrape {last if last is None else int(last)})")
    print(f"per life 200s: {dict(sorted((k[:2], v) for k, v in seen.items() if k[2] == 200))}")
    # reported, not asserted: a replica counts the shared directory at its own writes only
    files = sum(1 for f in os.listdir(reps[0].store) if not f.startswith("."))
    print(f"store: {files} files; kiln_image_store_images by replica {gauges}")
    print(f"{len(sim.urls)} links resolve on all 3 replicas; wall {time.monotonic() - wall0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
