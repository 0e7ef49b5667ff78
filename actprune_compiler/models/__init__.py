"""Models: load_model for aliases, local folders, GGUF files and hub ids (load.py), the dequantised copy of
a GGUF model (gguf.py), and devices and dtypes (devices.py)."""
