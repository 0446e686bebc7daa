"""Time `hetgmp predict` and `hetgmp export`, and the exported program serving, on a synth dataset.

    python benchmarks/bench_serve.py --work /tmp/serve --rows 1000000 [--device cpu|cuda]

Makes `hetgmp synth --rows N` and trains WDL d=16 for one epoch with --val on
one worker (both skipped when already in --work), then times, each as its own
`hetgmp` process: predict on the test split (its AUC/logloss against the run's
EVAL line) and on the train split; export with a float32 and a bfloat16 table;
and the exported programs scoring the train split through plain torch
(`torch.export.load`, batches of 65536), against predict's probabilities. Prints one line per figure: wall
seconds, CPU seconds of the process (user + system) and rows/s from the
command's own timing.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SERVE = """
import sys, time, numpy as np, torch
program, data, device, out = sys.argv[1:]
began = time.perf_counter()
model = torch.export.load(program).module().to(device)
loaded = time.perf_counter() - began
dense = torch.from_numpy(np.load(data + "/train_dense_feats.npy")).float()
ids = torch.from_numpy(np.load(data + "/train_sparse_feats.npy")).long()
batch = 65536
with torch.no_grad():
    model(dense[:batch].to(device), ids[:batch].to(device))
    began = time.perf_counter()
    parts = [model(dense[a:a + batch].to(device), ids[a:a + batch].to(device)).cpu() for a in range(0, len(ids), batch)]
    seconds = time.perf_counter() - began
np.save(out, torch.cat(parts).numpy())
print(f"loaded in {loaded:.1f} s; {len(ids)} rows in {seconds:.1f} s ({len(ids) / seconds:,.0f} rows/s)")
"""


def timed(argv: list[str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, CPU seconds of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def hetgmp(*args: object) -> list[str]:
    return [sys.executable, "-m", "hetgmp.cli", *map(str, args)]


def prepare(work: Path, rows: int, device: str) -> tuple[Path, Path]:
    data, ckpt = work / "data", work / "ckpt"
    if not (data / "meta.json").is_file():
        timed(hetgmp("synth", "--rows", rows, "--output", data, "--no-progress"))
    if not (ckpt / "latest").is_file():
        timed(hetgmp("train", "--data", data, "--model", "wdl", "--epochs", 1, "--val", "--device", device, "--no-progress",
                     "--checkpoint-dir", ckpt, "--metrics", work / "metrics.jsonl"))
    return data, ckpt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the dataset, the checkpoint and the outputs")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data, ckpt = prepare(args.work, args.rows, args.device)
    evaluated = [json.loads(line) for line in open(args.work / "metrics.jsonl") if '"eval"' in line][-1]
    print(f"run's EVAL line: auc {evaluated['auc']:.6f} logloss {evaluated['logloss']:.6f} rows {evaluated['test_rows']}")
    for split in ("test", "train"):
        out, wall, cpu = timed(hetgmp("predict", "--checkpoint", ckpt, "--data", data, "--split", split, "--device", args.device,
                                      "--output", args.work / f"{split}.npy", "--no-progress"))
        rate = re.search(r"\(([\d,]+) rows/s\)", out)[1]
        metrics = re.search(r"^auc .*$", out, re.M)[0]
        print(f"predict {split}: {wall:.1f} s wall, {cpu:.1f} s CPU, {rate} rows/s scoring; {metrics}")
    (args.work / "serve.py").write_text(SERVE)
    for dtype in ("float32", "bfloat16"):
        program = args.work / f"model-{dtype}.pt2"
        _, wall, cpu = timed(hetgmp("export", "--checkpoint", ckpt, "--output", program, "--table-dtype", dtype))
        print(f"export {dtype}: {wall:.1f} s wall, {cpu:.1f} s CPU, {program.stat().st_size / 2**20:.1f} MiB")
        served = args.work / f"served-{dtype}.npy"
        out, wall, cpu = timed([sys.executable, str(args.work / "serve.py"), str(program), str(data), args.device, str(served)])
        gap = np.abs(np.load(served) - np.load(args.work / "train.npy")).max()
        print(f"serve {dtype} program: {out.strip()} ({wall:.1f} s wall, {cpu:.1f} s CPU in all); max difference from predict {gap:.1e}")


if __name__ == "__main__":
    main()
