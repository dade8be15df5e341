"""`make bench`: every figure of the project measured in one run, each beside its baseline.

The orchestrator (cli.py) prepares frames from real photos, then runs one worker process per concern so
each figure is taken in the right process: TensorFlow only where the float source models run, the
device runtimes without it (one worker in .venv-legacy for tflite-runtime 2.14), and the single-core
agent figures under ``taskset -c 0``. Workers write typed results as JSON; report.py joins them.
"""
