package udpstream

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// In kernel-verdict mode the UDP socket that reserves the port receives:
// what the kernel delivers to it is its verdict on the ring's datagrams
// (see twin.go). It is read only for that, twinPrefix bytes of each
// datagram with the receive time and destination, by the receive
// goroutines whenever they pair and before they sleep, so that twins no
// ring datagram waits for do not fill it. It is kept off the runtime
// poller: the poller watches its sockets for their whole life, and a
// socket with a datagram for each one the ring takes would wake an idle
// thread for each.

// twinOptions are the control messages a twin is paired on.
var twinOptions = []sockOpt{
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, "SO_TIMESTAMPNS", false},
	{unix.IPPROTO_IP, unix.IP_PKTINFO, "IP_PKTINFO", false},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO", true},
	// Whether the datagram came in fragments (see pairTime).
	{unix.IPPROTO_IP, unix.IP_RECVFRAGSIZE, "IP_RECVFRAGSIZE", false},
	{unix.IPPROTO_IPV6, unix.IPV6_RECVFRAGSIZE, "IPV6_RECVFRAGSIZE", true},
}

// twinReads bounds the recvmmsg calls of one readTwins: a socket that
// never runs dry must not keep a receive goroutine from its ring. A read
// that drains the socket before the goroutine sleeps is bounded by the
// pairing's room instead: the kernel gives a UDP socket's memory back
// only once a good part of its buffer has been read.
const twinReads = 16

// openTwinSocket reserves the port with a socket that receives, and takes
// it off the runtime poller: a duplicate of the descriptor, in blocking
// mode, outlives the net.UDPConn that bound it, whose Close takes the
// original out of the poller.
func openTwinSocket(cfg *config, port uint16, ifName string) (*udpSocket, uint16, error) {
	conn, p, err := reservePort(cfg.network, port, ifName, true, false)
	if err != nil {
		return nil, 0, err
	}
	rc, err := conn.SyscallConn()
	fd := -1
	if err == nil {
		var derr error
		err = rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) })
		if err == nil && derr != nil {
			err = os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
		}
	}
	conn.Close()
	if err != nil {
		return nil, 0, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, 0, os.NewSyscallError("fcntl", err)
	}
	if err := setSocketOptions(fd, cfg.bufferSize, twinOptions); err != nil {
		unix.Close(fd)
		return nil, 0, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, 0, os.NewSyscallError("getsockname", err)
	}
	_, inet6 := sa.(*unix.SockaddrInet6)
	file := os.NewFile(uintptr(fd), "udp-twin")
	frc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, 0, err
	}
	us := newSocketReader(frc, twinPrefix, unix.MSG_TRUNC)
	us.file, us.inet6 = file, inet6
	return us, p, nil
}

// readTwins reads the twins the socket holds while ring datagrams wait
// for theirs, or when v.drain asks: the socket's queue, not the pairing's
// table, holds the twins of datagrams still in a ring. A read that comes back with fewer than it
// asked for found the socket empty before it returned.
func (us *udpSocket) readTwins(v *verdicts) {
	if v.held.len() == 0 && !v.drain {
		return
	}
	began := v.now()
	for i := 0; i < twinReads || v.drain; i++ {
		if !v.room(socketBatch) {
			// The rest stays queued on the socket until the pairing has
			// room for it: not a whole read.
			return
		}
		before := v.now()
		us.block = false
		if us.rc.Control(us.controlFn) != nil || us.err != nil {
			return // closed: the stream is ending
		}
		at, wall := v.now(), time.Now().UnixNano()
		for i := range us.n {
			n := int(us.hdrs[i].Len) // the whole payload's: MSG_TRUNC
			us.header(&v.scratch, i, v.port, n)
			prefix := us.bufs[i*us.slot : i*us.slot+min(n, us.slot)]
			k := makeTwinKey(v.seed, v.scratch.Src, v.scratch.Dst, n, prefix)
			v.twin(k, v.scratch.Time.UnixNano(), !v.scratch.Known(FieldFragments), at, wall, v.scratch.Version)
		}
		if us.n < socketBatch {
			v.sockEmptyAt = before
			break
		}
		if v.held.len() == 0 && !v.drain {
			break
		}
	}
	v.readAt = began
}

// drops returns the socket's count of dropped datagrams. It allocates
// nothing: it is read as often as the twins are.
func (us *udpSocket) drops() uint64 {
	us.dropCount = 0
	_ = us.rc.Control(us.dropsFn)
	return us.dropCount
}
