package udpstream

import "encoding/binary"

// A sender on this host may pass many datagrams of one flow to the kernel
// as one UDP GSO super-packet (UDP_SEGMENT): a single IP datagram whose
// payload is the datagrams' payloads end to end, each but the last of the
// segment size. Devices that take it whole, loopback and veth among them,
// show it whole to packet sockets, and the kernel splits it only on the way
// to a UDP socket. udpstream splits it the same way, learning the segment
// size from the virtio-net header the kernel writes before each frame.

// vnetHdrLen is the size of struct virtio_net_hdr (linux/virtio_net.h).
const vnetHdrLen = 10

// GSO types of a virtio-net header.
const (
	vnetGSONone  = 0
	vnetGSOUDPL4 = 5
	vnetGSOECN   = 0x80
)

// parseVnetHdr returns the segment size of a UDP GSO super-packet, 0 for
// a plain packet, or -1 for segmentation of another kind. The header is
// in host byte order, as a packet socket writes it on a little-endian
// host and on any host without legacy virtio.
func parseVnetHdr(h []byte) int {
	if len(h) < vnetHdrLen {
		return -1
	}
	switch h[1] &^ vnetGSOECN {
	case vnetGSONone:
		return 0
	case vnetGSOUDPL4:
		if size := int(binary.NativeEndian.Uint16(h[4:])); size > 0 {
			return size
		}
	}
	return -1
}

// gsoSegment writes into dst the datagram that is segment i of a UDP GSO
// super-packet and returns it, or nil when there is no segment i or dst is
// too short. hdr is the super-packet's IP header with its options or
// extension headers, udp its UDP header and whole payload, size the
// segment size. As the kernel does, each segment gets its own lengths, an
// IPv4 ID one more than the segment before and a header checksum, and a
// UDP checksum field adjusted for its length (a super-packet's holds the
// pseudo-header sum, its payload's checksum left to the device).
func gsoSegment(dst, hdr, udp []byte, size, i int) []byte {
	if size <= 0 || i < 0 || len(udp) < udpHeaderLen || len(hdr) == 0 {
		return nil
	}
	payload := udp[udpHeaderLen:]
	off := i * size
	if off >= len(payload) || off/size != i {
		return nil
	}
	part := payload[off:min(off+size, len(payload))]
	n := len(hdr) + udpHeaderLen + len(part)
	if n > len(dst) || n > 0xffff {
		return nil
	}
	b := dst[:n]
	copy(b, hdr)
	u := b[len(hdr):]
	copy(u, udp[:udpHeaderLen])
	copy(u[udpHeaderLen:], part)
	switch hdr[0] >> 4 {
	case 4:
		if len(hdr) < ipv4MinHeaderLen {
			return nil
		}
		binary.BigEndian.PutUint16(b[2:], uint16(n))
		binary.BigEndian.PutUint16(b[4:], binary.BigEndian.Uint16(hdr[4:])+uint16(i))
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:], ipv4HeaderChecksum(b[:len(hdr)]))
	case 6:
		if len(hdr) < ipv6HeaderLen {
			return nil
		}
		binary.BigEndian.PutUint16(b[4:], uint16(n-ipv6HeaderLen))
	default:
		return nil
	}
	oldLen := binary.BigEndian.Uint16(udp[4:])
	newLen := uint16(udpHeaderLen + len(part))
	binary.BigEndian.PutUint16(u[4:], newLen)
	binary.BigEndian.PutUint16(u[6:], onesAdd(onesAdd(binary.BigEndian.Uint16(udp[6:]), ^oldLen), newLen))
	return b
}

// onesAdd adds in ones' complement arithmetic.
func onesAdd(a, b uint16) uint16 {
	s := uint32(a) + uint32(b)
	return uint16(s + s>>16)
}

// gsoMaxSegments is the most datagrams a sender may pass as one
// super-packet (UDP_MAX_SEGMENTS).
const gsoMaxSegments = 128

// gsoCount returns how many datagrams an IP datagram of ipLen bytes held,
// given its first bytes (head) and its segment size from parseVnetHdr: 1
// unless it is a UDP GSO super-packet. IPv6 extension headers that head
// does not show whole count as payload.
func gsoCount(head []byte, ipLen, size int) int {
	if size <= 0 || len(head) == 0 {
		return 1
	}
	hdr := 0
	switch head[0] >> 4 {
	case 4:
		hdr = int(head[0]&0x0f) * 4
	case 6:
		hdr = ipv6HeaderLen
		if len(head) < ipv6HeaderLen {
			break
		}
		for nh := head[6]; nh == nhHopByHop || nh == nhRouting || nh == nhDestOptions || nh == nhFragment; {
			if len(head) < hdr+2 {
				break
			}
			n := 8
			if nh != nhFragment {
				n = (int(head[hdr+1]) + 1) * 8
			}
			nh = head[hdr]
			hdr += n
		}
	default:
		return 1
	}
	payload := ipLen - hdr - udpHeaderLen
	if payload <= size {
		return 1
	}
	return min((payload+size-1)/size, gsoMaxSegments)
}
