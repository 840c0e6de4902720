"""
The data sets: the common format (format), data files (storage), COCO (coco), the built-in "shapes"
(shapes), and one loader (datasets).
"""
