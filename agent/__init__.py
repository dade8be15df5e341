"""facelite device agent: detect, align, embed, match, track and publish faces.

Runs on tflite runtimes only. Nothing under this package may import TensorFlow
(tests/test_no_tensorflow.py proves it); the converter imports from here, never the other way.
"""

__version__ = "0.1.0"
