"""Lung segmentation: the network (`model`), its dataset (`data`), training (`train`, the
`cxr-review train-lungs` command) and `LungSegmenter` for inference (`inference`).

The segmenter runs once per film: the lung-focus score (`ml.lung_focus`) and lung-crop models
(`ml.lung_crop`) both use its mask. Only the inference side is re-exported here, so importing
`ml.lungseg` stays light; training code is `ml.lungseg.train`.
"""

from ml.checkpoints import LungSegMeta
from ml.lungseg.inference import BUNDLED_LUNGSEG, LungSegmenter, load_lung_model
from ml.lungseg.model import INPUT_SIZE, LungUNet

CHECKPOINT_KIND = LungSegMeta.KIND

__all__ = ["BUNDLED_LUNGSEG", "CHECKPOINT_KIND", "INPUT_SIZE", "LungSegmenter", "LungUNet", "load_lung_model"]
