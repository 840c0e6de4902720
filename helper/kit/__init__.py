"""
What students get besides the notebook and the module: the public self-check, the hand-in command
and the rubric they are graded by.
"""
