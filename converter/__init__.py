"""facelite converter (host side): pretrained face models to verified, quantized .tflite artifacts."""

__version__ = "0.1.0"
