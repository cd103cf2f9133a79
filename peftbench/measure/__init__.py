"""Measurement: it wraps a run, it never lives inside the loop.

``instrument`` holds the clocks, step timer, memory and energy meters and the FLOP count;
``costs`` turns them into a record's cost section (FLOPs per token, inference latency);
``forgetting`` reads a fixed text before and after training; ``overhead`` is
``peftbench costs``: what the harness adds over a bare loop, and each method's cost.
"""
