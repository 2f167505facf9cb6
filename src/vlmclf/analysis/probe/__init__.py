"""Linear probes on hidden states (the paper's Section 4: the information is there).
"""
