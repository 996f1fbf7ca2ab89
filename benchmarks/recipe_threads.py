"""How much faster a testbed VLM round runs alone on 2 threads than on 1 thread beside another job (issue 16).

    python benchmarks/recipe_threads.py [--steps 60] [--records 960] [--repeats 2]

The committed runs trained their VLM rounds on 1 torch thread each, two runs side by side on the 2 cores; the
recipe's default is one run on 2 threads. This times the same short round (`pipeline.train_vlm` with the arguments
the recipe's defaults give the last round of `--vlm_schedule`: 5 layers 128 wide, full scenes, count term and
token dropout on) in both conditions, in one run, alternating them, each round in a fresh process:

- `alone-2`: one process with 2 torch threads, nothing beside it;
- `paired-1`: two processes with 1 thread each, started together (the time is the slower one's).

It prints each time and the ratio paired-1 / alone-2 of the medians, by which a stage time measured the committed
way divides to estimate it on the default. Results: docs/testbed.md ("The recipe's time").
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    """Time one round of the default schedule's last kind with its stock arguments, `--steps` steps on `--records`."""
    import torch

    from hf_tokenprune_testbed.pipeline import ReproduceArguments, parse_schedule, train_vlm, vlm_round_arguments

    torch.set_num_threads(args.threads)
    defaults = ReproduceArguments()
    last = parse_schedule(defaults.vlm_schedule, defaults.vlm_cached_records)[-1]
    arguments = vlm_round_arguments(defaults, last) | dict(
        steps=args.steps, seed=args.seed, cached_records=args.records
    )
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        train_vlm(Path(folder) / "round", **arguments)
        print(json.dumps({"seconds": time.perf_counter() - started}))


def run(args, threads: int, seed: int) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--seed", str(seed)]
    command += ["--steps", str(args.steps), "--records", str(args.records)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def seconds(process: subprocess.Popen) -> float:
    out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"a worker failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--records", type=int, default=960)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    times = {"alone-2": [], "paired-1": []}
    for repeat in range(args.repeats):
        times["alone-2"].append(seconds(run(args, 2, repeat)))
        pair = [run(args, 1, repeat), run(args, 1, repeat + 100)]
        times["paired-1"].append(max(seconds(process) for process in pair))
        print(f"repeat {repeat}: alone-2 {times['alone-2'][-1]:.1f} s, paired-1 {times['paired-1'][-1]:.1f} s")
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{args.steps} steps of 16 on {args.records} records: alone-2 median {medians['alone-2']:.1f} s, "
        f"paired-1 median {medians['paired-1']:.1f} s, ratio paired-1 / alone-2 = "
        f"{medians['paired-1'] / medians['alone-2']:.2f}"
    )


if __name__ == "__main__":
    main()
