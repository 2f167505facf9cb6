"""Training-data frequency of class names vs per-class accuracy (the paper's Section 5, Figure 3).
"""
