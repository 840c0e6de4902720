"""
Shared by every part of helper/: seeds and devices (utils), safe file writing (files), command-line
plumbing (cli).
"""
