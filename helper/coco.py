"""`python -m helper.coco`: build the COCO HDF5 file from the raw data set (helper/data/coco.py)."""

from helper.data.coco import main

if __name__ == "__main__":
    main()
