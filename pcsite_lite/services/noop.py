# Does nothing: the packet follows its circuit's only out hop (or continues to its destination).
def process(pkt):
    pass
