"""The baseline zoo: every model `trainer --stage=train --model NAME` can train.

Two kinds of entry, so that nothing is implemented twice:
- a fixed fusion of the supernet's own parts (FNN, DCN, DCN-v2 stacked and
  parallel) is an architecture file in trainer/architectures/ plus the
  config overrides it implies (`--model.shallow=crossnetv2`), trained in Hard mode;
- every other design (LR, IPNN, DeepFM, xDeepFM, EDCN) is a short Keras model,
  one file per model in this package, sized by the same `SupernetConfig`.

This module is the registry only and imports no Keras: the CLI lists the
names in `--help` before TensorFlow loads; a model's class is imported when
it is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from typing import Any

ARCHITECTURES_DIR = pathlib.Path(__file__).resolve().parent.parent / "architectures"
OPTFUSION = "optfusion"
"""What `--stage=tune --model` calls the searched model (the search stage is tuned)."""


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One trainable baseline.

    Args:
        paper: citation shown in `--help` and the report.
        class_path: "module:Class" of a Keras model of its own, or None for an
            architecture-file design.
        architecture: file name in trainer/architectures/ (architecture-file designs).
        overrides: config overrides the design implies, as `section.key=value`.
    """

    paper: str
    class_path: str | None = None
    architecture: str | None = None
    overrides: tuple[str, ...] = ()

    @property
    def model_class(self) -> Any:
        """The ZooModel subclass (imported now), or None for an architecture-file design."""
        if self.class_path is None:
            return None
        module, name = self.class_path.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def architecture_path(self) -> pathlib.Path | None:
        return ARCHITECTURES_DIR / self.architecture if self.architecture else None


ZOO: dict[str, ZooEntry] = {
    "lr": ZooEntry("logistic regression on the field ids", "trainer.zoo.lr:LR"),
    "fnn": ZooEntry("Zhang et al., Deep Learning over Multi-field Categorical Data, ECIR 2016",
                    architecture="fnn.json"),
    "ipnn": ZooEntry("Qu et al., Product-based Neural Networks, ICDM 2016", "trainer.zoo.ipnn:IPNN"),
    "deepfm": ZooEntry("Guo et al., DeepFM, IJCAI 2017", "trainer.zoo.deepfm:DeepFM"),
    "dcn": ZooEntry("Wang et al., Deep & Cross Network, ADKDD 2017", architecture="parallel_dcn.json"),
    "dcnv2_s": ZooEntry("Wang et al., DCN V2 (stacked), WWW 2021", architecture="stacked_dcnv2.json",
                        overrides=("model.shallow=crossnetv2",)),
    "dcnv2_p": ZooEntry("Wang et al., DCN V2 (parallel), WWW 2021", architecture="parallel_dcn.json",
                        overrides=("model.shallow=crossnetv2",)),
    "xdeepfm": ZooEntry("Lian et al., xDeepFM, KDD 2018", "trainer.zoo.xdeepfm:XDeepFM"),
    "edcn": ZooEntry("Chen et al., EDCN, CIKM 2021", "trainer.zoo.edcn:EDCN"),
}
"""Name -> entry; `--model` accepts exactly these names."""

KERAS_MODELS = frozenset(name for name, entry in ZOO.items() if entry.class_path is not None)
"""Zoo names that are Keras models of their own (the rest are architecture files)."""


def describe() -> str:
    """The models and their papers, for `--help`."""
    return "; ".join(f"{name} ({entry.paper})" for name, entry in ZOO.items())
