package udpstream

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sender sends datagrams from the port-reservation socket. Control
// messages choose the source address (IP_PKTINFO, IPV6_PKTINFO) and set
// TTL and TOS per datagram, so one socket serves every address and both
// families.
type sender struct {
	conn  *net.UDPConn
	def   SendOptions
	local *localAddrs // to tell the host's unicast addresses from broadcasts
}

// oobPool holds control-message buffers, so a reply allocates nothing.
var oobPool = sync.Pool{New: func() any { return new([128]byte) }}

func (tx *sender) send(payload []byte, src netip.Addr, dst netip.AddrPort, ifIndex int, o SendOptions) error {
	if err := o.valid(); err != nil {
		return err
	}
	o = o.merged(tx.def)
	buf := oobPool.Get().(*[128]byte)
	defer oobPool.Put(buf)
	oob := buf[:0]
	// The link of a link-local address is ifIndex; its zone, which a
	// received Header carries, is not looked up again.
	src = src.Unmap().WithZone("")
	dst = netip.AddrPortFrom(dst.Addr().WithZone(""), dst.Port())
	if !tx.local.unicast(src) {
		// A datagram that came to a broadcast or multicast address is
		// answered from the interface's own address, which the kernel
		// picks; the reply leaves by the interface it came in on.
		src = netip.Addr{}
	} else if !src.IsLinkLocalUnicast() && !dst.Addr().IsLinkLocalUnicast() && !dst.Addr().IsMulticast() {
		// The routing table chooses, as for any reply; a group keeps the
		// interface its zone named, as a group means one link's members.
		ifIndex = 0
	}
	if dst.Addr().Unmap().Is4() {
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		if src.Is4() || ifIndex != 0 {
			var d []byte
			oob, d = appendCmsg(oob, unix.IPPROTO_IP, unix.IP_PKTINFO, unix.SizeofInet4Pktinfo)
			// in_pktinfo: ifindex, then the source (spec_dst), then addr.
			binary.NativeEndian.PutUint32(d[0:4], uint32(ifIndex))
			if src.Is4() {
				a := src.As4()
				copy(d[4:8], a[:])
			}
		}
		if v, ok := o.TTL.Get(); ok {
			oob = appendCmsgInt(oob, unix.IPPROTO_IP, unix.IP_TTL, int(v))
		}
		if v, ok := o.TOS.Get(); ok {
			oob = appendCmsgInt(oob, unix.IPPROTO_IP, unix.IP_TOS, int(v))
		}
	} else {
		if src.Is6() || ifIndex != 0 {
			var d []byte
			oob, d = appendCmsg(oob, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, unix.SizeofInet6Pktinfo)
			// in6_pktinfo: the source address, then the interface.
			if src.Is6() {
				a := src.As16()
				copy(d[:16], a[:])
			}
			// Set for link-local and multicast answers, which mean
			// something only on the link the datagram came in on.
			binary.NativeEndian.PutUint32(d[16:], uint32(ifIndex))
		}
		if v, ok := o.TTL.Get(); ok {
			oob = appendCmsgInt(oob, unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT, int(v))
		}
		if v, ok := o.TOS.Get(); ok {
			oob = appendCmsgInt(oob, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, int(v))
		}
	}
	_, _, err := tx.conn.WriteMsgUDPAddrPort(payload, oob, dst)
	return err
}

// appendCmsg appends a control message header for n bytes of zeroed data
// and returns the data.
func appendCmsg(b []byte, level, typ, n int) ([]byte, []byte) {
	start := len(b)
	space := unix.CmsgSpace(n)
	b = b[:start+space]
	clear(b[start:])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[start]))
	h.Level = int32(level)
	h.Type = int32(typ)
	h.SetLen(unix.CmsgLen(n))
	data := b[start+unix.CmsgLen(0) : start+unix.CmsgLen(n)]
	return b, data
}

func appendCmsgInt(b []byte, level, typ, v int) []byte {
	b, d := appendCmsg(b, level, typ, 4)
	binary.NativeEndian.PutUint32(d, uint32(int32(v)))
	return b
}
