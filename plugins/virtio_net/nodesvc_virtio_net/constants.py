"""virtio-net numbers (virtio 1.x §5.1) and the frame-size limits both paths share."""

from nodesvc.net.tap import (TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, VNET_HDR_LEN)

RX_QUEUE, TX_QUEUE = 0, 1
QUEUE_SIZE = 256

# Feature bits
F_CSUM, F_GUEST_CSUM, F_MTU, F_MAC = 0, 1, 3, 5
F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_UFO = 7, 8, 10
F_HOST_TSO4, F_HOST_TSO6, F_HOST_UFO = 11, 12, 14
F_MRG_RXBUF, F_STATUS = 15, 16

#: Offloads are pure pass-through with IFF_VNET_HDR: the guest's header goes to the TAP
#: untouched on TX, and the TAP only produces GSO/partial-checksum frames the guest
#: accepted (TUNSETOFFLOAD follows the acked GUEST_* bits) on RX.
OFFLOAD_FEATURES = sum(1 << b for b in (F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6,
                                        F_GUEST_UFO, F_HOST_TSO4, F_HOST_TSO6, F_HOST_UFO))

#: acked guest feature → what the TAP may hand us
TAP_OFFLOADS = ((F_GUEST_CSUM, TUN_F_CSUM), (F_GUEST_TSO4, TUN_F_TSO4),
                (F_GUEST_TSO6, TUN_F_TSO6), (F_GUEST_UFO, TUN_F_UFO))

S_LINK_UP = 1

# virtio_net_hdr_v1: flags u8, gso_type u8, hdr_len, gso_size, csum_start, csum_offset,
# num_buffers (all u16 LE)
HDR_FLAGS_OFFSET = 0
HDR_NUM_BUFFERS_OFFSET = 10

#: Largest frame either way: Ethernet + VLAN tag + a 64 KiB GSO packet (Firecracker's
#: MAX_BUFFER_SIZE is the same 65562 bytes with the header).
MAX_FRAME_LEN = 65550
MAX_BUFFER_LEN = VNET_HDR_LEN + MAX_FRAME_LEN
