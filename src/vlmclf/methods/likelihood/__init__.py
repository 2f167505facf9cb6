"""Class-name likelihood scoring: prefill once, score the class-name trie (the paper's
probabilistic inference).
"""
