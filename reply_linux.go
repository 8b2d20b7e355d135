package udpstream

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sender sends datagrams from the port-reservation socket. Control
// messages choose the source address (IP_PKTINFO, IPV6_PKTINFO) and set
// TTL and TOS per datagram, so one socket serves every address and both
// families.
type sender struct {
	conn  *net.UDPConn
	raw   syscall.RawConn // without conn: a socket off the runtime poller (kernel-verdict mode)
	inet6 bool            // raw's socket is AF_INET6
	def   SendOptions
	local *localAddrs // to tell the host's unicast addresses from broadcasts
}

// sendBuf is what one send needs besides the payload. A pool holds them,
// so that a reply allocates nothing.
type sendBuf struct {
	oob  [128]byte
	name unix.RawSockaddrInet6 // large enough for an IPv4 one too
	iov  unix.Iovec
	msg  unix.Msghdr
	err  error
	fn   func(uintptr) // b.sendmsg, made once: a method value allocates
}

var sendPool = sync.Pool{New: func() any {
	b := new(sendBuf)
	b.fn = b.sendmsg
	return b
}}

func (tx *sender) send(payload []byte, src netip.Addr, dst netip.AddrPort, ifIndex int, o SendOptions) error {
	if err := o.valid(); err != nil {
		return err
	}
	o = o.merged(tx.def)
	buf := sendPool.Get().(*sendBuf)
	defer sendPool.Put(buf)
	oob := buf.oob[:0]
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
	if tx.conn == nil {
		return tx.sendRaw(buf, payload, oob, dst)
	}
	_, _, err := tx.conn.WriteMsgUDPAddrPort(payload, oob, dst)
	return err
}

// sendRaw sends through raw, blocking while the socket's send buffer is
// full.
func (tx *sender) sendRaw(b *sendBuf, payload, oob []byte, dst netip.AddrPort) error {
	b.name = unix.RawSockaddrInet6{}
	port := (*[2]byte)(unsafe.Pointer(&b.name.Port))
	binary.BigEndian.PutUint16(port[:], dst.Port())
	namelen := uint32(unix.SizeofSockaddrInet6)
	if tx.inet6 {
		b.name.Family = unix.AF_INET6
		b.name.Addr = dst.Addr().As16() // IPv4 as IPv4-mapped
	} else {
		if !dst.Addr().Is4() {
			return fmt.Errorf("udpstream: sending to %v: %w", dst, unix.EAFNOSUPPORT)
		}
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.name))
		sa.Family = unix.AF_INET
		sa.Addr = dst.Addr().As4()
		namelen = unix.SizeofSockaddrInet4
	}
	b.iov = unix.Iovec{}
	if len(payload) > 0 {
		b.iov.Base = &payload[0]
		b.iov.SetLen(len(payload))
	}
	b.msg = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&b.name)), Namelen: namelen, Iov: &b.iov}
	b.msg.SetIovlen(1)
	if len(oob) > 0 {
		b.msg.Control = &oob[0]
		b.msg.SetControllen(len(oob))
	}
	b.err = nil
	var err error
	if tx.raw.Control(b.fn) != nil {
		// Control fails only once the socket is closed; say so as the
		// other modes' sockets do.
		err = net.ErrClosed
	} else {
		err = b.err
	}
	b.iov, b.msg, b.err = unix.Iovec{}, unix.Msghdr{}, nil // keep nothing of the caller's
	return err
}

// sendmsg is the RawConn callback of sendRaw.
func (b *sendBuf) sendmsg(fd uintptr) {
	for {
		_, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&b.msg)), 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			b.err = os.NewSyscallError("sendmsg", e)
		}
		return
	}
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
