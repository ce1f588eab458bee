"""Data: CIFAR-10 (files or download) and generated data, as in-memory uint8 tensor DataModules."""

from labquant.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    eval_transform,
    normalize,
    random_pad_crop_flip,
    train_transform,
)
from labquant.data.cifar10 import (
    CIFAR10_MD5,
    CIFAR10_URL,
    CIFAR10DataModule,
    download_cifar10,
    read_cifar10_folder,
)
from labquant.data.synthetic import SyntheticDataModule
from labquant.data.tensors import EpochSeededRandomSampler, TensorImageDataModule

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "CIFAR10DataModule",
    "EpochSeededRandomSampler",
    "SyntheticDataModule",
    "TensorImageDataModule",
    "download_cifar10",
    "eval_transform",
    "normalize",
    "random_pad_crop_flip",
    "read_cifar10_folder",
    "train_transform",
]
