"""tailshift: long-tail image classification, the re-sampling study and Context-Shift Augmentation."""
__version__ = "0.1.0"
