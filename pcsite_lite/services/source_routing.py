# Loose source routing, paper §2.1: the FIS maps this hop's label to the next label and hop.
# NATIVE: the site may run this service as its built-in "srcroute" kernel, which does exactly
# what process() does (pcsite_lite/native.py), in C.
NATIVE = "srcroute"


def process(pkt):
    hop = pkt.fetch(pkt.shim.read().label)
    if hop is None:
        return pkt.drop("no route")
    pkt.shim.update(label=hop["label"])
    pkt.forward_to(hop["next_hop"])
