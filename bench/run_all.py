"""Run every benchmark in turn (``make bench``); ``--quick`` passes a short mode where a
script has one. Results land in bench/results/. Benchmarks are measurements, not tests."""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# script -> whether it understands --quick
SCRIPTS = {
    "nuts.py": True, "smc.py": True, "tarp.py": False, "vi.py": True,
    "coin_paper.py": True, "lm.py": False,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=sorted(SCRIPTS), help="scripts to run")
    args = parser.parse_args()
    failed = []
    for script in args.only:
        command = [sys.executable, str(HERE / script)]
        if args.quick and SCRIPTS[script]:
            command.append("--quick")
        print(f"== {' '.join(command[1:])}", flush=True)
        if subprocess.run(command).returncode:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
