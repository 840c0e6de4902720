"""
Captioning models at work: training, decoding (greedy and beam search), metrics, checkpoints and
plots; the train, evaluate, caption and demo commands.
"""
