"""A run to completion: from a RunSpec to stored predictions and a summary.

``runner`` drives one run (select the pending examples, prefetch and batch them, call the
method, write each batch to the store, summarize); ``identity`` turns what the model receives
into the run id; ``loading`` turns a model spec into a model; ``sharding`` and ``distributed``
split the work across torchrun ranks; ``prefetch`` and ``batching`` keep the model fed;
``interrupts`` turns SIGINT/SIGTERM into a resumable stop; ``results`` reads a finished run back.
"""
