"""The Triton backend's train-mode BatchNorm: z from its forward kernel (a unit scale, no
shift), the statistics, the normalize + ReLU and the BN backward in torch ops for now
(backends/batchnorm_train.py); the kernels are to take them into their epilogue and prologue."""

from .. import batchnorm_train, reference
from .grouped_conv_bn_relu import grouped_conv_bn_relu


def grouped_conv_bn_relu_train(x, weight, gamma, beta, eps, stride, padding, dilation, groups,
                               relu):
    return batchnorm_train.conv_then_batchnorm(grouped_conv_bn_relu, x, weight, gamma, beta, eps,
                                               stride, padding, dilation, groups, relu)


batchnorm_train_backward = reference.batchnorm_train_backward
