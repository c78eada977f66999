"""EDCN's bridge before and after it keeps its scale (issue 19), on the Frappe sample.

Before: the paper's raw Hadamard bridge (`--model.bridge_norm=false`); after:
the scale-preserving bridge (trainer/zoo/edcn.py, the default). For each,
the RMS per layer at initialisation of the embeddings and of each layer's
cross, deep and bridge output on one batch of 512 train rows (frappe_cpu.yaml's
sizes, seed 1), and one `trainer --stage=train --model edcn --seed 1` run on
the Frappe CPU preset: test AUC, LogLoss and 15-bin ECE, before and after
the validation-fitted temperature. Nothing is chosen on the test split. A
finished run in --work is reused.

  python benchmarks/edcn_bridge.py [--data DIR] [--work DIR] [--seed 1] [--no-write]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibration_quality import train  # noqa: E402
from benchmarks.frappe_sample import frappe_run  # noqa: E402

VARIANTS = {"before (raw product)": ["--model.bridge_norm=false"], "after (scale kept)": []}


def init_rms(data: pathlib.Path, seed: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per variant: embeddings' RMS, then (cross, deep, bridge) RMS of each layer at initialisation."""
    import keras
    import numpy as np

    from pipeline.dataset_info import read_dataset_info
    from trainer.config import load_config, preset_path
    from trainer.data import make_dataset
    from trainer.zoo import ZOO

    info = read_dataset_info(data)
    features, _ = next(iter(make_dataset(info, "train", 512)))
    config = load_config(preset_path("frappe", "cpu")).model
    rms = lambda x: float(np.sqrt(np.mean(np.square(np.asarray(x)))))  # noqa: E731
    out = {}
    for name, extra in VARIANTS.items():
        keras.utils.set_random_seed(seed)
        model = ZOO["edcn"].model_class(dataclasses.replace(config, bridge_norm=not extra),
                                        [f.name for f in info.fields], [f.vocab_size for f in info.fields],
                                        max_lens=[f.max_len for f in info.fields])
        emb = rms(model.flat_embeddings(model.ids(features)))
        out[name] = [(emb, emb, emb), *[tuple(map(rms, layer)) for layer in model.layers_out(features)]]
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.results import header, publish

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path,
                        help="finished pipeline run of the Frappe sample (default: run it)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=pathlib.Path, help="work dir for the data and runs (default: a temp dir)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print, do not write RESULTS.md")
    args = parser.parse_args(argv)
    setup = header()
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="edcn-bridge-"))
    data = frappe_run(args.data, work)
    rms = init_rms(data, args.seed)
    runs = {name: train(data, work / ("before" if extra else "after"), "edcn", args.seed, extra)
            for name, extra in VARIANTS.items()}
    layers = len(next(iter(rms.values()))) - 1
    lines = ["| bridge | embeddings | " + " | ".join(f"layer {i} cross / deep / bridge" for i in range(1, layers + 1))
             + " |", "|---|---|" + "---|" * layers]
    for name, values in rms.items():
        lines.append(f"| {name} | {values[0][0]:.2e} | "
                     + " | ".join(" / ".join(f"{v:.1e}" for v in layer) for layer in values[1:]) + " |")
    lines += ["", "| bridge | best epoch / epochs | valid AUC | valid LogLoss | T | test AUC | test LogLoss | "
              "test ECE | calibrated test LogLoss | calibrated test ECE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in runs.items():
        c = m["calibration"]
        lines.append(f"| {name} | {m['best_epoch']} / {m['epochs']} | {m['best_valid_auc']:.4f} | "
                     f"{m['best_valid_logloss']:.4f} | {c['temperature']:.3f} | {m['test_auc']:.4f} | "
                     f"{m['test_logloss']:.4f} | {c['test']['ece']:.4f} | {c['test']['logloss_calibrated']:.4f} | "
                     f"{c['test']['ece_calibrated']:.4f} |")
    body = (f"{setup}- setup: pipeline on `shared/data/frappe/frappe_valid.tsv` (8:1:1 split), "
            f"`trainer --stage=train --model edcn --seed {args.seed} --calibrate=temperature`, preset "
            "`trainer/configs/frappe_cpu.yaml`, before with `--model.bridge_norm=false`. RMS at init: one batch of "
            f"512 train rows, seed {args.seed}.\n\n" + "\n".join(lines) + "\n")
    publish("EDCN: the bridge keeps its scale", body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
