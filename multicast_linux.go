package udpstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// memberships holds the stream's multicast joins on a UDP socket, and
// joins on interfaces as they come up.
//
// One socket holds both families: on an AF_INET6 socket the kernel passes
// options of level IPPROTO_IP to the IPv4 code (ipv6_setsockopt hands
// SOL_IP to udp_prot), so IPv4 joins land in the socket's IPv4 list, and
// __udp4_lib_mcast_deliver consults that list for the dual-stack socket
// (ip_mc_sf_allow).
type memberships struct {
	rc      syscall.RawConn
	own     *os.File // the socket opened for memberships in monitor mode
	inet6   bool     // an AF_INET6 socket
	ifIndex int      // WithInterface; 0 for every interface
	la      *localAddrs
	mu      sync.Mutex
}

// multicast joins the groups of cfg on the stream's socket, or in monitor
// mode on one opened for them, and applies WithMulticastLoopback.
func (s *system) multicast(cfg *config, ifIndex int) error {
	rc, inet6, bound := s.portConn()
	if cfg.mcastLoop != nil && bound {
		if err := setMulticastLoop(rc, inet6, *cfg.mcastLoop); err != nil {
			return err
		}
	}
	if len(cfg.joins) == 0 {
		return nil
	}
	m := &memberships{ifIndex: ifIndex, la: s.local}
	if bound {
		m.rc, m.inet6 = rc, inet6
	} else {
		// Monitor mode: a socket bound to nothing is in no port's hash
		// chain, so it holds memberships and receives nothing.
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		m.inet6 = err == nil
		if err != nil && cfg.network != "udp6" {
			fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		}
		if err != nil {
			return os.NewSyscallError("socket for multicast memberships", err)
		}
		m.own = os.NewFile(uintptr(fd), "udp-memberships")
		if m.rc, err = m.own.SyscallConn(); err != nil {
			m.own.Close()
			return err
		}
	}
	s.joins = m
	for _, j := range cfg.joins {
		if j.group.Is6() && !m.inet6 {
			return optionErr("join %v: the host has no IPv6", j.group)
		}
	}
	m.la.joins.Store(newJoinSet(cfg.joins))
	if err := m.follow(true); err != nil {
		return err
	}
	s.watcher.onChange = func() { _ = m.follow(false) }
	return nil
}

// follow joins every group on the interfaces that are up and multicast
// capable (or on the one of WithInterface) where it is not joined yet,
// and forgets interfaces that are gone, leaving their memberships so that
// an interface given the same index later is joined afresh. With strict,
// a failed join on the interface of WithInterface is returned; other
// failures skip the interface, which may be on its way out.
func (m *memberships) follow(strict bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	present := map[int]bool{} // the interfaces to join on
	exists := map[int]bool{}  // every interface, down or up
	if m.ifIndex != 0 {
		present[m.ifIndex], exists[m.ifIndex] = true, true
	} else {
		ifs, err := net.Interfaces()
		if err != nil {
			return fmt.Errorf("udpstream: listing interfaces to join groups on: %w", err)
		}
		for _, ifi := range ifs {
			exists[ifi.Index] = true
			if ifi.Flags&net.FlagUp != 0 && ifi.Flags&net.FlagMulticast != 0 {
				present[ifi.Index] = true
			}
		}
	}
	set := m.la.joins.Load()
	for g, jg := range set.groups {
		for _, idx := range jg.ifaces {
			if !exists[idx] {
				m.change(g, jg, idx, false)
				set = set.withoutIface(g, idx)
			}
		}
		for idx := range present {
			if slices.Contains(jg.ifaces, idx) {
				continue
			}
			if err := m.change(g, jg, idx, true); err != nil {
				if strict && m.ifIndex != 0 {
					return fmt.Errorf("udpstream: joining %v on interface %d: %w", g, idx, err)
				}
				continue
			}
			set = set.withIface(g, idx)
		}
	}
	m.la.joins.Store(set)
	return nil
}

// change joins (or leaves) group g on interface ifIndex: any source, or
// each source of a source-specific join. A membership the socket already
// holds (EADDRINUSE) counts as joined.
func (m *memberships) change(g netip.Addr, jg *joinedGroup, ifIndex int, join bool) error {
	var serr error
	err := m.rc.Control(func(fd uintptr) {
		if jg.anySource {
			serr = anySourceJoin(int(fd), g, ifIndex, join)
			return
		}
		for _, src := range jg.sources {
			if serr = sourceJoin(int(fd), g, src, ifIndex, join); serr != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if join && errors.Is(serr, unix.EADDRINUSE) {
		return nil
	}
	return serr
}

func anySourceJoin(fd int, g netip.Addr, ifIndex int, join bool) error {
	if g.Is4() {
		op, name := unix.IP_ADD_MEMBERSHIP, "setsockopt IP_ADD_MEMBERSHIP"
		if !join {
			op, name = unix.IP_DROP_MEMBERSHIP, "setsockopt IP_DROP_MEMBERSHIP"
		}
		return os.NewSyscallError(name, unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, op, &unix.IPMreqn{Multiaddr: g.As4(), Ifindex: int32(ifIndex)}))
	}
	op, name := unix.IPV6_JOIN_GROUP, "setsockopt IPV6_JOIN_GROUP"
	if !join {
		op, name = unix.IPV6_LEAVE_GROUP, "setsockopt IPV6_LEAVE_GROUP"
	}
	return os.NewSyscallError(name, unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, op, &unix.IPv6Mreq{Multiaddr: g.As16(), Interface: uint32(ifIndex)}))
}

// sizeofSockaddrStorage is struct sockaddr_storage's size; the structure
// is aligned as a pointer (include/uapi/linux/socket.h).
const sizeofSockaddrStorage = 128

// sourceJoin is MCAST_JOIN_SOURCE_GROUP (or MCAST_LEAVE_SOURCE_GROUP),
// at the level of the group's family: struct group_source_req, an
// interface index then two sockaddr_storage, the group and the source.
// golang.org/x/sys has no type for it.
func sourceJoin(fd int, g, src netip.Addr, ifIndex int, join bool) error {
	const align = unsafe.Sizeof(uintptr(0))
	var req [align + 2*sizeofSockaddrStorage]byte
	binary.NativeEndian.PutUint32(req[:4], uint32(ifIndex))
	level := unix.IPPROTO_IPV6
	if g.Is4() {
		level = unix.IPPROTO_IP
	}
	putSockaddr(req[align:], g)
	putSockaddr(req[align+sizeofSockaddrStorage:], src)
	op, name := unix.MCAST_JOIN_SOURCE_GROUP, "setsockopt MCAST_JOIN_SOURCE_GROUP"
	if !join {
		op, name = unix.MCAST_LEAVE_SOURCE_GROUP, "setsockopt MCAST_LEAVE_SOURCE_GROUP"
	}
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(op),
		uintptr(unsafe.Pointer(&req[0])), uintptr(len(req)), 0)
	if errno != 0 {
		return os.NewSyscallError(name, errno)
	}
	return nil
}

// putSockaddr writes a as a sockaddr_in or sockaddr_in6 with port 0.
func putSockaddr(b []byte, a netip.Addr) {
	if a.Is4() {
		binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET)
		v := a.As4()
		copy(b[4:8], v[:])
		return
	}
	binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET6)
	v := a.As16()
	copy(b[8:24], v[:])
}

// setMulticastLoop sets IP_MULTICAST_LOOP, and IPV6_MULTICAST_LOOP on an
// AF_INET6 socket, which sends IPv4 by the IPv4 code and its flag unless
// it is IPv6-only.
func setMulticastLoop(rc syscall.RawConn, inet6, on bool) error {
	v := 0
	if on {
		v = 1
	}
	var serr error
	err := rc.Control(func(fd uintptr) {
		if inet6 {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP, v); serr != nil {
				serr = os.NewSyscallError("setsockopt IPV6_MULTICAST_LOOP", serr)
				return
			}
			if only, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err == nil && only == 1 {
				return
			}
		}
		if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, v); serr != nil {
			serr = os.NewSyscallError("setsockopt IP_MULTICAST_LOOP", serr)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// close releases the socket opened for memberships in monitor mode; the
// stream's own socket takes its memberships with it when it closes.
func (m *memberships) close() {
	if m != nil && m.own != nil {
		m.own.Close()
	}
}
