"""The paper's 13 networks as `CXRNet`s: torchvision, timm and the paper's own CNN-X.

Every network exposes the same two halves, in the spirit of timm's `forward_features` /
`forward_head`:

* `forward_features(x)` → the feature map A (B×C×h×w) that class activation maps are made from;
* `forward_head(A)` → class logits (B×4).

Splitting the network in code, instead of catching A with forward hooks, keeps CAM computation
free of shared mutable state: two requests can explain two images on one model concurrently.

Grayscale X-rays reach these 3-channel networks by **channel replication** (see
`ml.transforms.to_model_input`), so ImageNet weights can be used unchanged when they are available.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from ml import CLASSES
from ml.pretrained import load_timm_pretrained, load_torchvision_state_dict

NUM_CLASSES = len(CLASSES)


class CXRNet(nn.Module):
    """A classifier split into a feature extractor and a head (see module docstring)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- torchvision wrappers


class ResNetNet(CXRNet):
    def __init__(self, net: tvm.ResNet) -> None:
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.net.fc(torch.flatten(self.net.avgpool(a), 1))


class DenseNetNet(CXRNet):
    """torchvision applies the final ReLU functionally, so A = relu(features(x))."""

    def __init__(self, net: tvm.DenseNet) -> None:
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.net.features(x))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))


class GoogLeNetNet(CXRNet):
    def __init__(self, net: tvm.GoogLeNet) -> None:
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n._transform_input(x)
        x = n.maxpool2(n.conv3(n.conv2(n.maxpool1(n.conv1(x)))))
        x = n.maxpool3(n.inception3b(n.inception3a(x)))
        x = n.inception4e(n.inception4d(n.inception4c(n.inception4b(n.inception4a(x)))))
        return n.inception5b(n.inception5a(n.maxpool4(x)))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.fc(n.dropout(torch.flatten(n.avgpool(a), 1)))


class InceptionV3Net(CXRNet):
    def __init__(self, net: tvm.Inception3) -> None:
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n._transform_input(x)
        x = n.maxpool1(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))))
        x = n.maxpool2(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)))
        x = n.Mixed_5d(n.Mixed_5c(n.Mixed_5b(x)))
        x = n.Mixed_6e(n.Mixed_6d(n.Mixed_6c(n.Mixed_6b(n.Mixed_6a(x)))))
        return n.Mixed_7c(n.Mixed_7b(n.Mixed_7a(x)))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.fc(torch.flatten(n.dropout(n.avgpool(a)), 1))


class SqueezeNetNet(CXRNet):
    """SqueezeNet's head is conv1×1 → ReLU → global average pooling, so its CAM is the class-score map
    relu(conv(A)) itself: its spatial mean is the logit, with the bias already inside the map."""

    def __init__(self, net: tvm.SqueezeNet) -> None:
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.classifier(a), 1)


class PlainConvNet(CXRNet):
    """AlexNet and VGG: `features` (conv stack ending in a max-pool) → avgpool → MLP classifier.

    A is taken at the last ReLU, before the final max-pool, which doubles the CAM's resolution; the
    head starts with that max-pool. There is no GAP head, so these networks are explained by Grad-CAM.
    """

    def __init__(self, net: tvm.AlexNet | tvm.VGG) -> None:
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.features
        for layer in list(features)[:-1]:
            x = layer(x)
        return x

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.classifier(torch.flatten(n.avgpool(n.features[-1](a)), 1))


class TimmNet(CXRNet):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)  # type: ignore[operator]

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(a)  # type: ignore[operator]


# --------------------------------------------------------------------------- CNN-X


class MixedPool(nn.Module):
    """Average- and max-pooling of the same map, concatenated along channels (2× the channels)."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.avg = nn.AvgPool2d(kernel_size=kernel_size, stride=stride)
        self.max = nn.MaxPool2d(kernel_size=kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.avg(x), self.max(x)], dim=1)


class CNNX(CXRNet):
    """The paper's own shallow CNN ("CNN-X"), as we read its figure.

    Our reading of the figure and text (Majeed et al. 2020, Fig. 3):

    * one input layer, then **three parallel convolution branches** with 16 filters each, kernel
      sizes 3×3, 5×5 and 9×9 ('same' padding so the branches stay aligned), each followed by
      batch normalisation and ReLU;
    * the figure draws an average-pooling and a max-pooling layer, both with pool size 2 and
      stride 3. We read them as two pooled views of every branch (as in "mixed" pooling), so each
      branch contributes 16 average-pooled and 16 max-pooled channels: 6 × 16 = 96 channels;
    * everything is concatenated, flattened and fed to **one fully connected layer** with one
      output per class, then softmax;
    * weights use Glorot (Xavier) uniform initialisation, biases zero.

    The paper gives "about 1.4 M parameters". With a 180×180 input the pooled maps are 60×60, the
    fully connected layer has 96·60·60·4 + 4 = 1,382,404 weights and the whole network 1.39 M,
    which matches; we therefore fix the input size at 180 px. (A 224 px input would give 2.2 M.)

    Because the head is flatten → linear, the network's decision decomposes exactly over
    locations: logit_c = Σ_{y,x} Σ_k W_{c,k,y,x} A_{k,y,x} + b_c. `ml.cam.decomposition` uses that
    instead of Grad-CAM.
    """

    input_size = 180
    kernel_sizes = (3, 5, 9)
    width = 16

    def __init__(self, num_classes: int = NUM_CLASSES, in_chans: int = 3, input_size: int = 180) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_chans, self.width, k, padding=k // 2, bias=False),
                nn.BatchNorm2d(self.width),
                nn.ReLU(inplace=True),
            )
            for k in self.kernel_sizes
        )
        self.pool = MixedPool(kernel_size=2, stride=3)
        side = (input_size - 2) // 3 + 1
        self.feature_shape = (2 * len(self.kernel_sizes) * self.width, side, side)
        c, h, w = self.feature_shape
        self.fc = nn.Linear(c * h * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.cat([branch(x) for branch in self.branches], dim=1))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(a, 1))


# --------------------------------------------------------------------------- builders


def _new_linear(old: nn.Linear) -> nn.Linear:
    head = nn.Linear(old.in_features, NUM_CLASSES)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def resnet_builder(fn, weights: str):
    def build(pretrained: bool) -> CXRNet:
        if not pretrained:
            return ResNetNet(fn(weights=None, num_classes=NUM_CLASSES))
        net = fn(weights=None)
        net.load_state_dict(load_torchvision_state_dict(weights))
        net.fc = _new_linear(net.fc)
        return ResNetNet(net)

    return build


def build_densenet201(pretrained: bool) -> CXRNet:
    weights = "DenseNet201_Weights.IMAGENET1K_V1"
    if not pretrained:
        return DenseNetNet(tvm.densenet201(weights=None, num_classes=NUM_CLASSES))
    net = tvm.densenet201(weights=None)
    # torchvision's own loader renames the old "norm.1"-style keys; reuse it.
    state = load_torchvision_state_dict(weights)
    tvm.densenet._load_state_dict(net, _FixedWeights(state), progress=False)
    net.classifier = _new_linear(net.classifier)
    return DenseNetNet(net)


class _FixedWeights:
    """Adapter so torchvision's densenet key-renaming loader accepts an already-loaded state dict."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def get_state_dict(self, progress: bool = False, check_hash: bool = False) -> dict[str, torch.Tensor]:
        return dict(self._state)


def build_googlenet(pretrained: bool) -> CXRNet:
    if not pretrained:
        net = tvm.googlenet(weights=None, num_classes=NUM_CLASSES, aux_logits=False, init_weights=True)
        return GoogLeNetNet(net)
    net = tvm.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    net.load_state_dict(load_torchvision_state_dict("GoogLeNet_Weights.IMAGENET1K_V1"))
    net.aux_logits, net.aux1, net.aux2 = False, None, None
    net.fc = _new_linear(net.fc)
    return GoogLeNetNet(net)


def build_inception_v3(pretrained: bool) -> CXRNet:
    if not pretrained:
        net = tvm.inception_v3(weights=None, num_classes=NUM_CLASSES, aux_logits=False, init_weights=True)
        return InceptionV3Net(net)
    net = tvm.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    net.load_state_dict(load_torchvision_state_dict("Inception_V3_Weights.IMAGENET1K_V1"))
    net.aux_logits, net.AuxLogits = False, None
    net.fc = _new_linear(net.fc)
    return InceptionV3Net(net)


def build_squeezenet1_1(pretrained: bool) -> CXRNet:
    if not pretrained:
        return SqueezeNetNet(tvm.squeezenet1_1(weights=None, num_classes=NUM_CLASSES))
    net = tvm.squeezenet1_1(weights=None)
    net.load_state_dict(load_torchvision_state_dict("SqueezeNet1_1_Weights.IMAGENET1K_V1"))
    conv = nn.Conv2d(512, NUM_CLASSES, kernel_size=1)
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    net.classifier[1] = conv
    return SqueezeNetNet(net)


def plain_builder(fn, weights: str):
    def build(pretrained: bool) -> CXRNet:
        if not pretrained:
            return PlainConvNet(fn(weights=None, num_classes=NUM_CLASSES))
        net = fn(weights=None)
        net.load_state_dict(load_torchvision_state_dict(weights))
        net.classifier[6] = _new_linear(net.classifier[6])
        return PlainConvNet(net)

    return build


def timm_builder(name: str):
    def build(pretrained: bool) -> CXRNet:
        import timm

        if not pretrained:
            return TimmNet(timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES))
        return TimmNet(load_timm_pretrained(name, num_classes=NUM_CLASSES))

    return build


def build_cnnx(pretrained: bool) -> CXRNet:
    if pretrained:
        raise ValueError("cnnx has no ImageNet weights: it is the paper's own network; use --no-pretrained")
    return CNNX()
