package udpstream

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// addrWatcher keeps a localAddrs current from netlink: a dump of the
// host's addresses, redone whenever the kernel announces an address change.
type addrWatcher struct {
	la   *localAddrs
	file *os.File
	rc   syscall.RawConn
	mu   sync.Mutex // one reader of the notification socket at a time
	buf  []byte
}

// newAddrWatcher subscribes to address changes, then takes the first dump,
// so that no change between the two is missed.
func newAddrWatcher() (_ *addrWatcher, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, os.NewSyscallError("socket netlink", err)
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind netlink", err)
	}
	w := &addrWatcher{la: &localAddrs{}, buf: make([]byte, 64<<10)}
	w.file = os.NewFile(uintptr(fd), "netlink-addr")
	if w.rc, err = w.file.SyscallConn(); err != nil {
		w.file.Close()
		return nil, err
	}
	set, err := dumpAddrs()
	if err != nil {
		w.file.Close()
		return nil, err
	}
	w.la.cur.Store(set)
	w.la.refresh = w.refresh
	return w, nil
}

// refresh drains pending notifications and, if there were any, dumps the
// addresses again. It reports whether the set was replaced.
func (w *addrWatcher) refresh() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	pending := false
	_ = w.rc.Control(func(fd uintptr) {
		for {
			n, err := unix.Read(int(fd), w.buf)
			if n > 0 || errors.Is(err, unix.ENOBUFS) {
				// ENOBUFS: notifications were lost; a dump covers them.
				pending = true
				continue
			}
			if err == unix.EINTR {
				continue
			}
			return
		}
	})
	if !pending {
		return false
	}
	set, err := dumpAddrs()
	if err != nil {
		return false
	}
	w.la.cur.Store(set)
	return true
}

// watch applies address changes as they are announced, until the read
// deadline of the notification socket passes.
func (w *addrWatcher) watch() error {
	return w.rc.Read(func(uintptr) bool {
		w.refresh()
		return false
	})
}

func (w *addrWatcher) close() { w.file.Close() }

// dumpAddrs lists the host's addresses with RTM_GETADDR. A dump that ran
// while addresses or links changed may have skipped some (the kernel marks
// it NLM_F_DUMP_INTR): it is taken again.
func dumpAddrs() (*addrSet, error) {
	for range 10 {
		rib, err := syscall.NetlinkRIB(syscall.RTM_GETADDR, syscall.AF_UNSPEC)
		if err != nil {
			return nil, os.NewSyscallError("netlink RTM_GETADDR", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rib)
		if err != nil {
			return nil, os.NewSyscallError("netlink parse", err)
		}
		if set, ok := parseAddrs(msgs); ok {
			return set, nil
		}
	}
	return nil, errors.New("udpstream: local addresses kept changing during every netlink dump")
}

// parseAddrs builds an address set from a dump, reporting false if the
// dump was interrupted.
func parseAddrs(msgs []syscall.NetlinkMessage) (*addrSet, bool) {
	set := &addrSet{exact: map[netip.Addr]struct{}{}}
	for i := range msgs {
		if msgs[i].Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
			return nil, false
		}
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != syscall.RTM_NEWADDR || len(m.Data) < unix.SizeofIfAddrmsg {
			continue
		}
		ifa := (*unix.IfAddrmsg)(unsafe.Pointer(&m.Data[0]))
		if ifa.Flags&unix.IFA_F_TENTATIVE != 0 {
			// The kernel accepts nothing for an address still in
			// duplicate address detection.
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		var local, address netip.Addr
		for _, a := range attrs {
			ip, ok := netip.AddrFromSlice(a.Value)
			if !ok {
				continue
			}
			switch a.Attr.Type {
			case unix.IFA_LOCAL:
				local = ip
			case unix.IFA_ADDRESS:
				address = ip
			case unix.IFA_BROADCAST:
				set.exact[ip] = struct{}{}
				set.broadcasts = append(set.broadcasts, ip)
			}
		}
		// IFA_LOCAL is the local end of a point-to-point link, where
		// IFA_ADDRESS is the peer; otherwise only IFA_ADDRESS may be set.
		if !local.IsValid() {
			local = address
		}
		if !local.IsValid() {
			continue
		}
		set.exact[local] = struct{}{}
		if local.Is4() && ifa.Flags&unix.IFA_F_SECONDARY == 0 && ifa.Prefixlen < 31 {
			// Linux adds a broadcast route for the subnet of every
			// primary address, whether or not a broadcast was given.
			if p, err := local.Prefix(int(ifa.Prefixlen)); err == nil {
				b := lastAddr(p)
				set.exact[b] = struct{}{}
				set.broadcasts = append(set.broadcasts, b)
			}
		}
		if ifa.Scope == unix.RT_SCOPE_HOST {
			if p, err := local.Prefix(int(ifa.Prefixlen)); err == nil {
				set.prefixes = append(set.prefixes, p)
			}
			if !slices.Contains(set.loopbacks, int(ifa.Index)) {
				set.loopbacks = append(set.loopbacks, int(ifa.Index))
			}
		}
	}
	return set, true
}

// lastAddr returns the highest address of an IPv4 prefix: its broadcast.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
