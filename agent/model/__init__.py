"""The model contract: artifact manifests, the interpreter runtimes, and the calibration maths they carry."""
