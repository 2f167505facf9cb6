"""Sweeps over prompts, label-set sizes and settings (the paper's Tables 1-2, Figure 2).
"""
