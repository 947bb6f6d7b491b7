"""The model zoo: pretrained networks and their conv layers, real activations and network-level fidelity.

Sources: torchvision ImageNet classifiers and CIFAR-10 ResNets (through the torch hub cache), the offline
``digits-cnn`` trained by ``python -m kcp.zoo.train_digits`` (weights in ``kcp/assets/``), and user checkpoints.
"""

from kcp.zoo.activations import get_conv, layer_batches, layer_inputs
from kcp.zoo.calibration import layer_moments
from kcp.zoo.checkpoint import MAX_CHECKPOINT_BYTES
from kcp.zoo.errors import CheckpointError, WeightsUnavailable, ZooError
from kcp.zoo.fidelity import Fidelity, baseline_logits, network_fidelity
from kcp.zoo.images import SPLITS, default_images, describe_images, max_images, sample_images
from kcp.zoo.layers import ConvLayerInfo, conv_layers, rest_macs
from kcp.zoo.load import load_model, weights_available
from kcp.zoo.loaded import LoadedModel
from kcp.zoo.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec
from kcp.zoo.swap import with_layer
from kcp.zoo.weights import checkpoints_dir

__all__ = [
    "DEFAULT_MODEL",
    "MAX_CHECKPOINT_BYTES",
    "MODELS",
    "SPLITS",
    "CheckpointError",
    "ConvLayerInfo",
    "Fidelity",
    "LoadedModel",
    "ModelSpec",
    "WeightsUnavailable",
    "ZooError",
    "baseline_logits",
    "checkpoints_dir",
    "conv_layers",
    "rest_macs",
    "default_images",
    "describe_images",
    "get_conv",
    "get_spec",
    "layer_batches",
    "layer_inputs",
    "layer_moments",
    "load_model",
    "max_images",
    "network_fidelity",
    "sample_images",
    "weights_available",
    "with_layer",
]
