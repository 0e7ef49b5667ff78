"""An artifact: the folder `actprune compile` writes (folder.py) and the check of its program (check.py)."""
