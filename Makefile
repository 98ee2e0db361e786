# The README's two set-up commands: `make demo` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-realistic verify-zoo gpu-check trt-check plugins serve-bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch (a bare `torch` would pull a multi-GB CUDA build on a CPU box).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stn-deploy demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# CPU benchmark of the tutorial STN: eager vs torch.compile vs our ONNX vs the plain opset-20 ONNX.
bench: $(STAMP)
	$(VENV)/bin/stn-deploy bench --out bench/results/cpu-tutorial-R.json --plot bench/results/cpu-tutorial-R.png

# The realistic STNs (28x28 to 3x64x256, batch 1 and 32, one and two threads): eager,
# torch.compile, ONNX Runtime standard and plugin flavour; the kernels in GB/s against memcpy.
bench-realistic: $(STAMP)
	$(PY) bench/cpu_realistic.py --out bench/results/cpu-realistic.json --plot bench/results/cpu-realistic.png

# Every shipped checkpoint and transformer type, both flavours and fp16, verified on ORT.
verify-zoo: $(STAMP)
	$(PY) bench/verify_zoo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info out

# GPU machines only: TensorRT engines, parity and timing (see README "TensorRT").
trt-check: $(STAMP)
	$(PY) -c "import tensorrt" 2>/dev/null || $(PY) -m pip install -q -e '.[trt]'
	$(PY) bench/trt_check.py

# GPU machines only: kernels as a PyTorch CUDA extension vs F.grid_sample, eager and torch.compile,
# then the gpu-marked tests (TrtSession's CUDA side), then whole models with our kernels swapped in
# (bench/gpu_models.py). Without the venv: bash bench/gpu_machine.sh.
gpu-check: $(STAMP)
	PYTHON=$(PY) bash bench/gpu_machine.sh bench/results

# The plugin library (CUDA kernels; the TensorRT plugin when TensorRT headers are found).
plugins: $(STAMP)
	$(VENV)/bin/stn-deploy plugins build

# Load benchmark of the embedded server over loopback (2-core figures in the README).
serve-bench: $(STAMP)
	$(VENV)/bin/stn-deploy serve-bench -- --out bench/results/load_bench_tutorial-R_1sample.json
	$(VENV)/bin/stn-deploy serve-bench -- --samples 8 --out bench/results/load_bench_tutorial-R_8samples.json
