"""`python -m helper.gpu_check`: the GPU check, one report (helper/dev/gpu_check.py)."""
import sys

from helper.dev.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
