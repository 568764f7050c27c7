"""What a receiver killed -9 mid-transfer costs over several connections: the sender's bytes into
the chaos proxy over the whole run, as a multiple of the file.

    python bench/kill_resume.py --size 256M --streams 8 --rate 10M --reset-every 8M --kill-after 1.5 --runs 3

Each connection is capped at --rate and reset after every --reset-every bytes it carries; the
receiver is killed -9 --kill-after seconds into the transfer and started again on the same port.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.proxy import parse_size  # noqa: E402
from tests.chaos.test_kill import free_port  # noqa: E402
from tests.conftest import ChaosProxy, Proc  # noqa: E402


def receiver(dest: Path, port: int) -> Proc:
    proc = Proc(["recv", str(dest), "--listen", f"127.0.0.1:{port}", "--json"])
    proc.wait_event("listening")
    return proc


def one_run(args: argparse.Namespace, src: Path, work: Path) -> dict[str, float]:
    dest, port = work / "out", free_port()
    rx = receiver(dest, port)
    spare = ["--spare-first"] if args.spare_first else []
    limit = ["--max-resets", str(args.max_resets)] if args.max_resets else []
    proxy = ChaosProxy(f"127.0.0.1:{port}", "--rate", args.rate, "--reset-every", args.reset_every, *spare, *limit)
    tx = Proc(["send", str(src), proxy.address, "--json", "--streams", str(args.streams), "--retries", "60"])
    tx.wait_event("start", timeout_s=60)
    if args.kill_after > 0:
        time.sleep(args.kill_after)  # a benchmark's fault at a set time, not a wait for an event
        os.kill(rx.proc.pid, signal.SIGKILL)
        rx.finish()
        rx = receiver(dest, port)
    sent_code, recv_code = tx.finish(timeout_s=600), rx.finish(timeout_s=60)
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.finish()
    up = sum(int(e["up_bytes"]) for e in proxy.events("closed"))
    done = tx.events("done")[-1]
    same = subprocess.run(["cmp", str(src), str(dest / src.name)]).returncode == 0
    (dest / src.name).unlink(missing_ok=True)
    return {
        "ok": float(sent_code == recv_code == 0 and same),
        "resets": float(len(proxy.events("reset"))),
        "up_ratio": up / src.stat().st_size,
        "retransmits": float(done["retransmits"]),
        "reconnects": float(done["reconnects"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--rate", default="10M")
    ap.add_argument("--reset-every", default="8M")
    ap.add_argument("--kill-after", type=float, default=1.5, help="0: no kill")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--spare-first", action="store_true", help="never reset the transfer's first connection")
    ap.add_argument("--max-resets", type=int, default=0, help="reset no more connections than this in all")
    args = ap.parse_args()
    os.environ.setdefault("RTRANSFER_SECRET", "bench-kill-resume")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "data.bin"
        with open(src, "wb") as f:
            for _ in range(parse_size(args.size) >> 20):
                f.write(os.urandom(1 << 20))
        results = [one_run(args, src, work) for _ in range(args.runs)]
    for r in results:
        print(json.dumps(r))
    print(f"median bytes into the proxy: {statistics.median(r['up_ratio'] for r in results):.3f}x the file")


if __name__ == "__main__":
    main()
