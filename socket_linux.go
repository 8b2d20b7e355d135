package udpstream

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket mode receives through the UDP socket bound to the port, which
// the kernel has already judged every datagram for: no filter, no
// reassembly, no verdicts here. What the IP header carried comes from
// control messages; what they do not carry is marked unknown.
const (
	socketBatch = 16      // datagrams per recvmmsg
	socketSlot  = 1 << 16 // holds any UDP payload, so that none is cut short
	socketOOB   = 512     // control messages of one datagram: options and extension headers included

	// IPV6_FLOWINFO of linux/in6.h, which x/sys does not define: with it
	// on, a datagram's flow label comes as a control message.
	ipv6FlowInfo = 11
)

// udpSocket is one UDP socket of a socket-mode stream, on the runtime
// poller through its net.UDPConn.
type udpSocket struct {
	conn      *net.UDPConn // nil for a twin socket
	file      *os.File     // a twin socket's, off the poller; nil otherwise
	rc        syscall.RawConn
	readFn    func(uintptr) bool // us.read, made once: a method value allocates
	controlFn func(uintptr)      // the same for RawConn.Control
	dropsFn   func(uintptr)      // reads the drop count into dropCount
	dropCount uint64
	slot      int  // bytes of each datagram read
	inet6     bool // an AF_INET6 socket (a twin socket's)
	flags     int  // more recvmmsg flags

	hdrs  [socketBatch]unix.Mmsghdr
	iovs  [socketBatch]unix.Iovec
	names [socketBatch]unix.RawSockaddrInet6 // large enough for an IPv4 one too
	bufs  []byte                             // socketBatch slots
	oob   []byte                             // socketBatch control buffers

	// The last recvmmsg: the datagrams it got, or its error. With block
	// unset, a socket with nothing queued reports 0 datagrams instead of
	// waiting.
	n     int
	err   error
	block bool

	ext [8]uint8 // the extension headers of the datagram being read

	dropsSeen uint64 // kernel drops reported so far; under system.mu
	stopped   atomic.Bool
	dropsEnd  atomic.Uint64 // the kernel's count when the socket stopped
}

// openSockets opens the UDP sockets of socket mode: one, or one per
// fanout member, bound with SO_REUSEPORT. The first reserves the port and
// carries replies.
func (s *system) openSockets(cfg *config, port uint16, ifName string) error {
	bufBytes := max(cfg.bufferSize/cfg.fanout, minBufferSize)
	for i := range cfg.fanout {
		conn, p, err := reservePort(cfg.network, port, ifName, true, cfg.fanout > 1)
		if err != nil {
			return err
		}
		us, err := newUDPSocket(conn, bufBytes)
		if err != nil {
			conn.Close()
			return err
		}
		s.sources = append(s.sources, us)
		if i == 0 {
			s.reserve, s.port, port = conn, p, p
		}
	}
	return nil
}

// newUDPSocket asks conn's socket for the control messages socket mode
// reads, and sizes its receive buffer.
func newUDPSocket(conn *net.UDPConn, bufBytes int) (*udpSocket, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	us := newSocketReader(rc, socketSlot, 0)
	us.conn = conn
	var serr error
	err = rc.Control(func(fd uintptr) { serr = setSocketOptions(int(fd), bufBytes, socketOptions) })
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	return us, nil
}

// newSocketReader makes the recvmmsg buffers of a socket read through rc,
// slot bytes of each datagram.
func newSocketReader(rc syscall.RawConn, slot, flags int) *udpSocket {
	us := &udpSocket{
		rc:    rc,
		slot:  slot,
		flags: flags,
		bufs:  make([]byte, socketBatch*slot),
		oob:   make([]byte, socketBatch*socketOOB),
	}
	us.readFn = us.read
	us.controlFn = func(fd uintptr) { us.read(fd) }
	us.dropsFn = func(fd uintptr) { us.dropCount = socketDrops(int(fd)) }
	for i := range us.hdrs {
		us.iovs[i].Base = &us.bufs[i*slot]
		us.iovs[i].SetLen(slot)
		h := &us.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&us.names[i]))
		h.Iov = &us.iovs[i]
		h.SetIovlen(1)
		h.Control = &us.oob[i*socketOOB]
	}
	return us
}

// sockOpt is a socket option that a mode turns on.
type sockOpt struct {
	level, opt int
	name       string
	inet6      bool // only on an AF_INET6 socket
}

// socketOptions are the control messages socket mode reads. An IPv6
// socket asks for the IPv4 ones too, for the IPv4 datagrams a dual-stack
// socket takes.
var socketOptions = []sockOpt{
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, "SO_TIMESTAMPNS", false},
	{unix.IPPROTO_IP, unix.IP_PKTINFO, "IP_PKTINFO", false},
	{unix.IPPROTO_IP, unix.IP_RECVTTL, "IP_RECVTTL", false},
	{unix.IPPROTO_IP, unix.IP_RECVTOS, "IP_RECVTOS", false},
	{unix.IPPROTO_IP, unix.IP_RECVOPTS, "IP_RECVOPTS", false},
	// Linux 4.10: without it a fragmented datagram looks whole.
	{unix.IPPROTO_IP, unix.IP_RECVFRAGSIZE, "IP_RECVFRAGSIZE", false},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO", true},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, "IPV6_RECVHOPLIMIT", true},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, "IPV6_RECVTCLASS", true},
	{unix.IPPROTO_IPV6, ipv6FlowInfo, "IPV6_FLOWINFO", true},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVHOPOPTS, "IPV6_RECVHOPOPTS", true},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVDSTOPTS, "IPV6_RECVDSTOPTS", true},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVRTHDR, "IPV6_RECVRTHDR", true},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVFRAGSIZE, "IPV6_RECVFRAGSIZE", true},
}

// setSocketOptions sizes the socket's receive buffer and turns on opts.
func setSocketOptions(fd, bufBytes int, opts []sockOpt) error {
	// Above net.core.rmem_max only with CAP_NET_ADMIN; SO_RCVBUF then
	// takes what the limit allows.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bufBytes) != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, bufBytes); err != nil {
			return os.NewSyscallError("setsockopt SO_RCVBUF", err)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return os.NewSyscallError("getsockname", err)
	}
	_, inet6 := sa.(*unix.SockaddrInet6)
	for _, o := range opts {
		if o.inet6 && !inet6 {
			continue
		}
		if err := unix.SetsockoptInt(fd, o.level, o.opt, 1); err != nil {
			return fmt.Errorf("udpstream: %w", os.NewSyscallError("setsockopt "+o.name, err))
		}
	}
	return nil
}

func (*udpSocket) family() uint8 { return 0 }

func (us *udpSocket) unblock() { _ = us.conn.SetReadDeadline(time.Unix(1, 0)) }

// read is the poller callback of a recvmmsg: it reports whether the read
// is over.
func (us *udpSocket) read(fd uintptr) bool {
	for i := range us.hdrs {
		h := &us.hdrs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet6
		h.SetControllen(socketOOB)
		h.Flags = 0
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&us.hdrs[0])), socketBatch, uintptr(unix.MSG_DONTWAIT|us.flags), 0, 0)
		switch e {
		case 0:
			us.n, us.err = int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			us.n, us.err = 0, nil
			return !us.block
		default:
			us.n, us.err = 0, os.NewSyscallError("recvmmsg", e)
		}
		return true
	}
}

// receiveSocket is the loop of a UDP socket's receive goroutine: read
// batches while datagrams are queued; when none is, hand the batch over,
// then wait in the poller.
func receiveSocket[T any](ctx context.Context, us *udpSocket, h *handler[T]) error {
	defer drainSocket(us, h)
	for {
		us.block = h.n == 0
		if err := us.rc.Read(us.readFn); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("udpstream: receiving: %w", err)
		}
		if us.err != nil {
			return fmt.Errorf("udpstream: receiving: %w", us.err)
		}
		if us.n == 0 {
			// As the ring does: hand over, and let the consumer run on
			// this thread, before waiting.
			if h.flush(ctx) != nil {
				return nil
			}
			runtime.Gosched()
			continue
		}
		for i := range us.n {
			if err := h.datagram(ctx, us, i); err != nil {
				// The stream has ended: the rest of this read is
				// counted as what it would have been.
				h.ending = true
				for j := i + 1; j < us.n; j++ {
					_ = h.datagram(ctx, us, j)
				}
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
	}
}

// drainSocket ends a UDP socket's part of the stream. The socket stops
// taking datagrams, and what it holds is counted as abandoned, with the
// batch not handed over.
func drainSocket[T any](us *udpSocket, h *handler[T]) {
	h.discard()
	h.ending = true
	if !us.stop() {
		return
	}
	for {
		// Control, not Read: the read deadline has passed.
		us.block = false
		if us.rc.Control(us.controlFn) != nil || us.err != nil || us.n == 0 {
			return
		}
		for i := range us.n {
			_ = h.datagram(context.Background(), us, i)
		}
	}
}

// stop makes the socket take no more datagrams and keeps the kernel's
// final drop count. It reports whether the socket is still there.
func (us *udpSocket) stop() bool {
	var serr error
	err := us.rc.Control(func(fd uintptr) {
		// The port stays reserved until the socket closes.
		if serr = attachFilter(int(fd), dropAllFilter); serr == nil {
			us.dropsEnd.Store(socketDrops(int(fd)))
		}
	})
	if err != nil || serr != nil {
		return false
	}
	us.stopped.Store(true)
	return true
}

// kernelDrops returns the datagrams the kernel dropped at the socket
// since the last call: its receive buffer full, or a bad checksum.
func (us *udpSocket) kernelDrops() uint64 {
	var cur uint64
	if us.stopped.Load() {
		cur = us.dropsEnd.Load()
	} else if us.rc.Control(func(fd uintptr) { cur = socketDrops(int(fd)) }) != nil {
		return 0
	}
	if cur <= us.dropsSeen {
		return 0
	}
	d := cur - us.dropsSeen
	us.dropsSeen = cur
	return d
}

// socketDrops reads the socket's drop count (SK_MEMINFO_DROPS), which,
// unlike SO_RXQ_OVFL, can be read while no datagram comes.
func socketDrops(fd int) uint64 {
	var info [unix.SK_MEMINFO_VARS]uint32
	l := uint32(unsafe.Sizeof(info))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0
	}
	return uint64(info[unix.SK_MEMINFO_DROPS])
}

func (us *udpSocket) close() {
	if us.file != nil {
		us.file.Close()
		return
	}
	us.conn.Close()
}

// datagram handles datagram i of the last recvmmsg.
func (h *handler[T]) datagram(ctx context.Context, us *udpSocket, i int) error {
	msg := &us.hdrs[i]
	if msg.Hdr.Flags&unix.MSG_TRUNC != 0 {
		h.counts.drops[dropTooLong].Add(1)
		return nil
	}
	if h.ending {
		h.counts.abandoned.Add(1)
		return nil
	}
	payload := us.bufs[i*us.slot : i*us.slot+int(msg.Len)]
	pkt := &h.batch[h.n]
	us.header(&pkt.Header, i, h.port, len(payload))
	if pkt.Header.Version == 6 {
		h.setZones(&pkt.Header, pkt.Header.IfIndex)
	}
	return h.decodeInto(ctx, pkt, deliver, nil, nil, payload)
}

// header fills hd from datagram i's source address and control messages.
func (us *udpSocket) header(hd *Header, i int, port uint16, n int) {
	*hd = Header{UDPLength: uint16(udpHeaderLen + n), Fragments: 1}
	name := &us.names[i]
	sport := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&name.Port))[:])
	var src netip.Addr
	if name.Family == unix.AF_INET6 {
		src = netip.AddrFrom16(name.Addr).Unmap()
	} else {
		in4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		src = netip.AddrFrom4(in4.Addr)
	}
	var dst netip.Addr
	fragSize := 0
	ext := 0
	msg := &us.hdrs[i].Hdr
	oob := us.oob[i*socketOOB : i*socketOOB+int(msg.Controllen)]
	for len(oob) >= unix.SizeofCmsghdr {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(c.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			break
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case c.Level == unix.SOL_SOCKET && c.Type == unix.SO_TIMESTAMPNS && len(data) >= int(unsafe.Sizeof(unix.Timespec{})):
			ts := (*unix.Timespec)(unsafe.Pointer(&data[0]))
			hd.Time = time.Unix(int64(ts.Sec), int64(ts.Nsec))
		case c.Level == unix.IPPROTO_IP:
			switch c.Type {
			case unix.IP_PKTINFO: // in_pktinfo: ifindex, spec_dst, then the header's destination
				if len(data) >= unix.SizeofInet4Pktinfo {
					hd.IfIndex = int(int32(binary.NativeEndian.Uint32(data)))
					dst = netip.AddrFrom4([4]byte(data[8:12]))
				}
			case unix.IP_TTL:
				hd.TTL = uint8(cmsgInt(data))
			case unix.IP_TOS:
				if len(data) > 0 {
					hd.TOS = data[0]
				}
			case unix.IP_RECVOPTS: // the options as received, from the first fragment
				if len(data) > 0 {
					hd.Options = clipClone(data)
				}
			case unix.IP_RECVFRAGSIZE:
				fragSize = cmsgInt(data)
			}
		case c.Level == unix.IPPROTO_IPV6:
			switch c.Type {
			case unix.IPV6_PKTINFO: // in6_pktinfo: the destination, then ifindex
				if len(data) >= unix.SizeofInet6Pktinfo && !dst.IsValid() {
					dst = netip.AddrFrom16([16]byte(data[:16])).Unmap()
					hd.IfIndex = int(int32(binary.NativeEndian.Uint32(data[16:])))
				}
			case unix.IPV6_HOPLIMIT:
				hd.TTL = uint8(cmsgInt(data))
			case unix.IPV6_TCLASS:
				hd.TOS = uint8(cmsgInt(data))
			case ipv6FlowInfo:
				if len(data) >= 4 {
					hd.FlowLabel = binary.BigEndian.Uint32(data) & 0xfffff
				}
			case unix.IPV6_HOPOPTS, unix.IPV6_RTHDR, unix.IPV6_DSTOPTS:
				// In the order of the header chain.
				if ext < len(us.ext) {
					us.ext[ext] = extHeaderNumber(c.Type)
					ext++
				}
			case unix.IPV6_RECVFRAGSIZE:
				fragSize = cmsgInt(data)
			}
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	hd.Src = netip.AddrPortFrom(src, sport)
	hd.Dst = netip.AddrPortFrom(dst, port)
	if hd.Time.IsZero() {
		hd.Time = time.Now()
	}
	hd.Unknown = FieldUDPChecksum
	if src.Is4() {
		hd.Version = 4
		hd.Unknown |= FieldID | FieldDF
		hd.MF = fragSize > 0
	} else {
		hd.Version = 6
		if ext > 0 {
			hd.ExtHeaders = clipClone(us.ext[:ext])
		}
		if fragSize > 0 {
			hd.Unknown |= FieldID | FieldExtHeaders
		}
	}
	if fragSize > 0 {
		// Each fragment carried at most its own size of the datagram.
		// An IPv6 atomic fragment is one, and reports a size too.
		hd.Unknown |= FieldFragments
		hd.Fragments = max(1, (int(hd.UDPLength)+fragSize-1)/fragSize)
	}
	if msg.Flags&unix.MSG_CTRUNC != 0 {
		// Control messages past the buffer were lost (a long extension
		// header takes it all): whether the datagram came in fragments,
		// and what else they would have said, is unknown.
		hd.Unknown |= FieldID | FieldFragments | FieldExtHeaders
		hd.ExtHeaders = nil
	}
}

// extHeaderNumber is the Next Header number of the extension header a
// control message of type typ carries.
func extHeaderNumber(typ int32) uint8 {
	switch typ {
	case unix.IPV6_RTHDR:
		return 43
	case unix.IPV6_DSTOPTS:
		return 60
	}
	return 0 // Hop-by-Hop
}

// cmsgInt is a control message's int.
func cmsgInt(data []byte) int {
	if len(data) < 4 {
		return 0
	}
	return int(int32(binary.NativeEndian.Uint32(data)))
}
