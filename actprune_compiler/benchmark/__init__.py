"""Speed: in-process timings against baselines (bench.py), timed generation (generation.py), and cold and
warm starts in fresh processes (startup.py)."""
