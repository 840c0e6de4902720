"""
The project's own tools: the benchmark, the README's figures, the GPU check, storing the notebook's
outputs, and the nbval plugin.
"""
