"""The names a training run chooses between, TensorFlow-free: the CLI lists them (`dermedge train
--help`) without importing the modules that build them, which import TensorFlow."""

ARCHS = ("simple_cnn", "efficientnet_lite0", "mobilenet_v2")  # built by models.build_model
AUGMENTS = ("basic", "field", "none")  # the training-time augmentations of train/data.py
