"""ImageWikiQA: classification knowledge as a foundation for reasoning (the paper's Table 4).
"""
