"""The names a training run chooses between, TensorFlow-free: the CLI lists them (`dermedge train
--help`) without importing the modules that build them, which import TensorFlow."""

ARCHS = ("simple_cnn", "efficientnet_lite0", "mobilenet_v2")  # built by models.build_model
# the training-time augmentations of train/data.py; "-scale": lesion-scale zoom 0.56-1.8x
AUGMENTS = ("basic", "field", "none", "scale", "field-scale")
