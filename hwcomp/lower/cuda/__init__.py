"""NVIDIA GPUs: TVM's CUDA pipeline with DLight schedules, verified where a device is present."""
