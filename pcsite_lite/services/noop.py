# Does nothing: the packet follows its circuit's only out hop (or continues to its destination).
# NATIVE: the site may run it as its built-in "noop" kernel, in C (pcsite_lite/native.py).
NATIVE = "noop"


def process(pkt):
    pass
