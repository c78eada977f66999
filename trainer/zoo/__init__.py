"""The baseline zoo: every model `trainer --stage=train --model NAME` can train.

Two kinds of entry, so that nothing is implemented twice:
- a fixed fusion of the supernet's own parts (FNN, DCN, DCN-v2 stacked and
  parallel) is an architecture file in trainer/architectures/ plus the
  config overrides it implies (`--model.shallow=crossnetv2`), trained in Hard mode;
- every other design (LR, IPNN, DeepFM, xDeepFM, EDCN) is a short Keras model,
  one file per model in this package, sized by the same `SupernetConfig`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

from trainer.zoo.base import ZooModel
from trainer.zoo.deepfm import DeepFM
from trainer.zoo.edcn import EDCN
from trainer.zoo.ipnn import IPNN
from trainer.zoo.lr import LR
from trainer.zoo.xdeepfm import XDeepFM

ARCHITECTURES_DIR = pathlib.Path(__file__).resolve().parent.parent / "architectures"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One trainable baseline.

    Args:
        paper: citation shown in `--help` and the report.
        model_class: a ZooModel subclass, or None for an architecture-file design.
        architecture: file name in trainer/architectures/ (architecture-file designs).
        overrides: config overrides the design implies, as `section.key=value`.
    """

    paper: str
    model_class: Callable[..., ZooModel] | None = None
    architecture: str | None = None
    overrides: tuple[str, ...] = ()

    @property
    def architecture_path(self) -> pathlib.Path | None:
        return ARCHITECTURES_DIR / self.architecture if self.architecture else None


ZOO: dict[str, ZooEntry] = {
    "lr": ZooEntry("logistic regression on the field ids", LR),
    "fnn": ZooEntry("Zhang et al., Deep Learning over Multi-field Categorical Data, ECIR 2016",
                    architecture="fnn.json"),
    "ipnn": ZooEntry("Qu et al., Product-based Neural Networks, ICDM 2016", IPNN),
    "deepfm": ZooEntry("Guo et al., DeepFM, IJCAI 2017", DeepFM),
    "dcn": ZooEntry("Wang et al., Deep & Cross Network, ADKDD 2017", architecture="parallel_dcn.json"),
    "dcnv2_s": ZooEntry("Wang et al., DCN V2 (stacked), WWW 2021", architecture="stacked_dcnv2.json",
                        overrides=("model.shallow=crossnetv2",)),
    "dcnv2_p": ZooEntry("Wang et al., DCN V2 (parallel), WWW 2021", architecture="parallel_dcn.json",
                        overrides=("model.shallow=crossnetv2",)),
    "xdeepfm": ZooEntry("Lian et al., xDeepFM, KDD 2018", XDeepFM),
    "edcn": ZooEntry("Chen et al., EDCN, CIKM 2021", EDCN),
}
"""Name -> entry; `--model` accepts exactly these names."""

__all__ = ["ZOO", "ZooEntry", "ZooModel", "LR", "IPNN", "DeepFM", "XDeepFM", "EDCN"]
