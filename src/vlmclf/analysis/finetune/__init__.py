"""Fine-tuning with the text-generation objective (the paper's Section 4: training closes the gap).
"""
