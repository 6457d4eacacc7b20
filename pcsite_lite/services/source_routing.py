# Loose source routing, paper §2.1: the FIS maps this hop's label to the next label and hop.
def process(pkt):
    hop = pkt.fetch(pkt.shim.read().label)
    if hop is None:
        return pkt.drop("no route")
    pkt.shim.update(label=hop["label"])
    pkt.forward_to(hop["next_hop"])
