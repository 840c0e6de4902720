"""`python -m helper.caption`: caption images with a checkpoint (helper/captioning/caption.py)."""
import sys

from helper.captioning.caption import main

if __name__ == "__main__":
    sys.exit(main())
