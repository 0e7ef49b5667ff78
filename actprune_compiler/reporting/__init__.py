"""What every result carries: atomic files and output checks (files.py), stage timings and versions
(runinfo.py), text tables (tables.py)."""
