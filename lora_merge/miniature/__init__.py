"""The miniature Merge-to-Learn study (`python cli.py demo --world miniature`), sized to run on a CPU.

world.py builds a deterministic synthetic world (tokenizer, pretraining corpus,
general mix G, three skills, eval sets); pretrain.py makes θpre (cached under
runs/); study.py runs CFT, RT and PTM on it and report.py writes tables and plots.
"""
