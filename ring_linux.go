package udpstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The receive ring is TPACKET_V2: fixed-size frames, each handed to user
// space as soon as the kernel fills it, with a wakeup per frame while the
// reader sleeps. TPACKET_V3 batches better but hands over a block only
// when it is full or its retire timer fires, which would add milliseconds
// to every answer of a lightly loaded request/response server. With V2 a
// busy reader makes no system call per datagram: it walks the ring until
// it finds no ready frame and only then waits in the poller.
const (
	ringFrameSize = 2048         // holds an IP datagram of ringFrameSize - 90 bytes behind an Ethernet header
	ringBlockSize = 128 << 10    // allocation unit of the ring in the kernel
	bigBufSize    = 64<<10 + 512 // a virtio-net and a link-layer header and a whole IPv6 datagram, for frames too big for a slot

	// Offsets in a TPACKET_V2 frame (linux/if_packet.h): the tpacket2_hdr,
	// then a sockaddr_ll at TPACKET_ALIGN(sizeof(tpacket2_hdr)) = 32.
	tpStatus  = 0
	tpLen     = 4
	tpSnaplen = 8
	tpMac     = 12
	tpNet     = 14
	tpSec     = 16
	tpNsec    = 20
	sllIfIdx  = 32 + 4
	sllPkt    = 32 + 10
	frameHdr  = 32 + 20
)

// packetSocket is one AF_PACKET socket with its receive ring.
//
// The socket itself is not on the runtime poller. The poller watches
// sockets edge-triggered for their whole life, and a packet socket with a
// V2 ring signals every frame: a thread idle in epoll_wait would be woken
// for each datagram even while the receive goroutine is busy and needs no
// wakeup, which costs more than the datagram itself. Instead the socket
// sits in a private epoll instance whose fd is on the runtime poller, so
// that waiting and cancellation (a read deadline) work as for any Go file,
// and the receive goroutine mutes the socket there while it sleeps between
// batches under load (see receive): a waiting goroutine costs no system
// call beyond the poller's own, and a sleeping one wakes no thread.
type packetSocket struct {
	fam     uint8
	ifIndex int // the interface bound to; 0 for all
	fd      int // the packet socket; closed by close
	file    *os.File
	rc      syscall.RawConn // of the private epoll instance
	epfd    int             // the private epoll instance, owned by file
	ev      unix.EpollEvent
	muted   bool               // the socket's events are off
	waitFn  func(uintptr) bool // ps.waitReady, made once: a method value allocates
	woken   bool               // waitReady runs after a wakeup
	waitErr error
	ring    []byte
	frames  int
	next    int    // the frame to read next
	big     []byte // receives frames flagged TP_STATUS_COPY

	rules   *netRules // the namespace's, shared by the stream's sockets
	pktType uint8     // the link-layer packet type of the frame peek returned
}

func (ps *packetSocket) family() uint8 { return ps.fam }

func (ps *packetSocket) unblock() { _ = ps.file.SetReadDeadline(time.Unix(1, 0)) }

// errNoCapNetRaw explains the one setup error users meet most. A user
// namespace of one's own is no advice here: its CAP_NET_RAW covers only a
// network namespace of its own, with nothing on it.
var errNoCapNetRaw = errors.New("udpstream: packet sockets need CAP_NET_RAW: run as root, " +
	"or grant it with 'sudo setcap cap_net_raw=ep /path/to/program'")

// newPacketFD opens a non-blocking packet socket bound to no protocol,
// which receives nothing until bind names one.
func newPacketFD() (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		err = os.NewSyscallError("socket", err)
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			err = fmt.Errorf("%w: %w", errNoCapNetRaw, err)
		}
		return -1, err
	}
	return fd, nil
}

// checkPacketSockets reports whether this process may open packet sockets,
// and returns the one it opened to find out, for the stream to use: each
// packet socket closed costs an RCU grace period.
// When it may not and the port to reserve (0: none) needs
// CAP_NET_BIND_SERVICE too, the advice grants both at once.
func checkPacketSockets(reserve uint16) (int, error) {
	fd, err := newPacketFD()
	var serr *os.SyscallError
	if errors.Is(err, errNoCapNetRaw) && needsBindService(reserve) && errors.As(err, &serr) {
		return -1, fmt.Errorf("udpstream: packet sockets need CAP_NET_RAW, and port %d needs CAP_NET_BIND_SERVICE: run as root, "+
			"or grant both with 'sudo setcap cap_net_raw,cap_net_bind_service=ep /path/to/program': %w", reserve, serr)
	}
	return fd, err
}

// openPacketSocket creates the socket of one family: filter first, then
// the ring, then bind, so that nothing unfiltered is ever queued. With
// group noFanout the socket stands alone; with newFanout it starts a
// fanout group; otherwise it joins the group of that id (0 is an id the
// kernel gives out like any other). It returns the group's id. fd is a packet socket
// from newPacketFD, which it takes over, or -1 to open one.
func openPacketSocket(fd int, fam uint8, port uint16, ifIndex int, ringBytes int, group int, cfg *config) (_ *packetSocket, _ int, err error) {
	if fd < 0 {
		if fd, err = newPacketFD(); err != nil {
			return nil, 0, err
		}
	}
	ps := &packetSocket{fam: fam, ifIndex: ifIndex, fd: -1}
	ps.waitFn = ps.waitReady
	defer func() {
		if err != nil && fd >= 0 {
			if ps.ring != nil {
				_ = unix.Munmap(ps.ring)
			}
			_ = unix.Close(fd)
		}
	}()

	prog, err := portFilter(fam, port, cfg.portErrors, cfg.anyDestination)
	if err != nil {
		return nil, 0, err
	}
	if group >= 0 {
		// Between bind and joining the group the socket would receive on
		// its own, duplicating what the group delivers: it keeps nothing
		// until it has joined.
		err = attachFilter(fd, dropAllFilter)
	} else {
		err = attachFilter(fd, prog)
	}
	if err != nil {
		return nil, 0, err
	}
	// A virtio-net header before each frame tells a UDP GSO super-packet
	// and its segment size (see gsoSegment). The kernel offers it only to
	// SOCK_RAW sockets, hence the link-layer header in every frame.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return nil, 0, os.NewSyscallError("setsockopt PACKET_VNET_HDR", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return nil, 0, os.NewSyscallError("setsockopt PACKET_VERSION", err)
	}
	// A datagram too big for a ring slot still gets a (truncated) slot,
	// and with PACKET_COPY_THRESH a whole copy on the socket's queue.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_COPY_THRESH, 1); err != nil {
		return nil, 0, os.NewSyscallError("setsockopt PACKET_COPY_THRESH", err)
	}
	// The queue must hold a few 64 KiB datagrams; raising the limit past
	// net.core.rmem_max needs CAP_NET_ADMIN, so a failure is not fatal.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	}

	blocks := (ringBytes + ringBlockSize - 1) / ringBlockSize
	req := unix.TpacketReq{
		Block_size: ringBlockSize,
		Block_nr:   uint32(blocks),
		Frame_size: ringFrameSize,
		Frame_nr:   uint32(blocks * (ringBlockSize / ringFrameSize)),
	}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, 0, os.NewSyscallError("setsockopt PACKET_RX_RING", err)
	}
	ring, err := unix.Mmap(fd, 0, blocks*ringBlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, 0, os.NewSyscallError("mmap", err)
	}
	ps.ring = ring
	ps.frames = int(req.Frame_nr)

	proto := uint16(unix.ETH_P_IP)
	if fam == 6 {
		proto = unix.ETH_P_IPV6
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifIndex}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, 0, os.NewSyscallError("bind", err)
	}
	if group != noFanout {
		if group, err = joinFanout(fd, group); err != nil {
			return nil, 0, err
		}
		if err := attachFilter(fd, prog); err != nil {
			return nil, 0, err
		}
	}

	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, 0, os.NewSyscallError("epoll_create1", err)
	}
	// Level-triggered, so that unmuting a socket with frames waiting
	// raises the event at once. Non-blocking before NewFile, so that the
	// File goes on the runtime poller.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(epfd)
		return nil, 0, os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, 0, os.NewSyscallError("fcntl", err)
	}
	ps.fd, fd = fd, -1 // ps owns it now
	ps.epfd = epfd
	ps.file = os.NewFile(uintptr(epfd), fmt.Sprintf("packet-ipv%d-epoll", fam))
	if ps.rc, err = ps.file.SyscallConn(); err != nil {
		ps.close()
		return nil, 0, err
	}
	return ps, group, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// status returns the status word of frame i.
func (ps *packetSocket) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&ps.ring[i*ringFrameSize+tpStatus]))
}

// ready reports whether the next frame belongs to user space.
func (ps *packetSocket) ready() bool {
	return atomic.LoadUint32(ps.status(ps.next))&unix.TP_STATUS_USER != 0
}

// peek returns the next ready frame's packet and metadata, or ok false when
// the ring is empty. A frame too long for its slot is read from the
// socket's queue instead; one the kernel could not keep whole is reported
// with tooLong and what the slot holds of it. The frame stays owned by
// user space until release.
func (ps *packetSocket) peek(m *frameMeta) (pkt []byte, tooLong, losing, ok bool) {
	st := atomic.LoadUint32(ps.status(ps.next))
	if st&unix.TP_STATUS_USER == 0 {
		return nil, false, false, false
	}
	f := ps.ring[ps.next*ringFrameSize : (ps.next+1)*ringFrameSize]
	// SOCK_RAW: length and snap length count from the link-layer header
	// at mac (none on some links); the IP header is at net.
	n := int(binary.NativeEndian.Uint32(f[tpLen:]))
	snap := int(binary.NativeEndian.Uint32(f[tpSnaplen:]))
	mac := int(binary.NativeEndian.Uint16(f[tpMac:]))
	net := int(binary.NativeEndian.Uint16(f[tpNet:]))
	m.sec = binary.NativeEndian.Uint32(f[tpSec:])
	m.nsec = binary.NativeEndian.Uint32(f[tpNsec:])
	m.ifIndex = int(int32(binary.NativeEndian.Uint32(f[sllIfIdx:])))
	ps.pktType = f[sllPkt]
	m.vouched = st&(unix.TP_STATUS_CSUMNOTREADY|unix.TP_STATUS_CSUM_VALID) != 0
	losing = st&unix.TP_STATUS_LOSING != 0
	m.gso, m.ipLen = 0, 0
	if mac < frameHdr+vnetHdrLen || net < mac || mac+snap > len(f) {
		return nil, true, losing, true
	}
	ll := net - mac
	m.gso = parseVnetHdr(f[mac-vnetHdrLen : mac])
	m.ipLen = n - ll

	if st&unix.TP_STATUS_COPY != 0 {
		// The whole packet waits on the socket's queue, in ring order,
		// behind its own virtio-net header.
		if ps.big == nil {
			ps.big = make([]byte, bigBufSize)
		}
		got, err := unix.Read(ps.fd, ps.big)
		if err != nil || got != vnetHdrLen+n {
			return f[net : mac+snap], true, losing, true
		}
		m.gso = parseVnetHdr(ps.big)
		return ps.big[vnetHdrLen+ll : got], false, losing, true
	}
	if snap < n {
		return f[net : mac+snap], true, losing, true
	}
	return f[net : mac+snap], false, losing, true
}

// release hands the current frame back to the kernel and moves on.
func (ps *packetSocket) release() {
	atomic.StoreUint32(ps.status(ps.next), unix.TP_STATUS_KERNEL)
	ps.next++
	if ps.next == ps.frames {
		ps.next = 0
	}
}

// wait blocks in the runtime poller until a frame is ready or the read
// deadline passes, unmuting the socket first if it was muted.
//
// Woken with no frame ready, it looks for a socket error: the kernel
// reports ENETDOWN when the bound interface goes down, and the socket
// receives again once it is back up, so that is not fatal; but an
// interface that was removed never comes back, and wait says so.
func (ps *packetSocket) wait() error {
	if ps.muted {
		if err := ps.setEvents(unix.EPOLLIN); err != nil {
			return err
		}
		ps.muted = false
	}
	ps.woken, ps.waitErr = false, nil
	if err := ps.rc.Read(ps.waitFn); err != nil {
		return err
	}
	return ps.waitErr
}

// mute turns the socket's events off in the private instance, so that
// frames arriving while the receive goroutine is busy wake no thread;
// wait turns them back on.
func (ps *packetSocket) mute() error {
	if ps.muted {
		return nil
	}
	if err := ps.setEvents(0); err != nil {
		return err
	}
	ps.muted = true
	return nil
}

func (ps *packetSocket) setEvents(events uint32) error {
	ps.ev = unix.EpollEvent{Events: events, Fd: int32(ps.fd)}
	if err := unix.EpollCtl(ps.epfd, unix.EPOLL_CTL_MOD, ps.fd, &ps.ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// waitReady is the poller callback of wait: it reports whether wait is
// over.
func (ps *packetSocket) waitReady(uintptr) bool {
	if ps.ready() {
		return true
	}
	if ps.woken {
		// Reading the error clears it; until then the socket stays
		// readable in the private instance.
		if e, _ := unix.GetsockoptInt(ps.fd, unix.SOL_SOCKET, unix.SO_ERROR); e != 0 && ps.ifIndex != 0 {
			if _, err := net.InterfaceByIndex(ps.ifIndex); err != nil {
				// No prefix: receive wraps it in the library's own.
				ps.waitErr = fmt.Errorf("interface %d is gone: %w", ps.ifIndex, unix.Errno(e))
				return true
			}
		}
	}
	ps.woken = true
	return false
}

// stop makes the socket take no more frames, so that what its ring holds
// can be counted to the last one.
func (ps *packetSocket) stop() error {
	return attachFilter(ps.fd, dropAllFilter)
}

// attachFilter sets the socket's classic BPF filter, replacing any other.
func attachFilter(fd int, prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return os.NewSyscallError("setsockopt SO_ATTACH_FILTER", err)
	}
	return nil
}

// Fanout groups of openPacketSocket, besides the ids the kernel gives.
const (
	noFanout  = -1 // the socket stands alone
	newFanout = -2 // the socket starts a group whose id the kernel picks
)

// joinFanout adds a bound socket to the PACKET_FANOUT group id or, with id
// newFanout, to a new group whose id the kernel picks. It returns the id.
func joinFanout(fd, id int) (int, error) {
	flags := unix.PACKET_FANOUT_HASH
	if id == newFanout {
		id, flags = 0, flags|unix.PACKET_FANOUT_FLAG_UNIQUEID
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, id|flags<<16); err != nil {
		return 0, os.NewSyscallError("setsockopt PACKET_FANOUT", err)
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT)
	if err != nil {
		return 0, os.NewSyscallError("getsockopt PACKET_FANOUT", err)
	}
	return v & 0xffff, nil
}

// kernelDrops reads and resets the kernel's count of frames it dropped
// because the ring was full.
func (ps *packetSocket) kernelDrops() uint64 {
	st, err := unix.GetsockoptTpacketStats(ps.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return 0
	}
	return uint64(st.Drops)
}

// close releases the ring and the socket. No goroutine may use ps after.
func (ps *packetSocket) close() {
	if ps.ring != nil {
		_ = unix.Munmap(ps.ring)
		ps.ring = nil
	}
	if ps.file != nil {
		ps.file.Close()
		ps.file = nil
	}
	if ps.fd >= 0 {
		unix.Close(ps.fd)
		ps.fd = -1
	}
}
