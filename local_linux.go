package udpstream

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// addrWatcher keeps a localAddrs current from netlink: a dump of the
// host's addresses and multicast memberships, redone whenever the kernel
// announces a change of either.
type addrWatcher struct {
	la   *localAddrs
	file *os.File
	rc   syscall.RawConn
	mu   sync.Mutex // one reader of the notification socket at a time
	buf  []byte
	// onChange, when set, runs after each change applied, with mu held:
	// the stream's joins follow interfaces through it.
	onChange func()
	// gone, when set, says whether something the stream cannot do without
	// has disappeared (an interface it is bound to); watch then ends with
	// the error it returns.
	gone func() error
}

// newAddrWatcher subscribes to address changes, and with links to link
// changes too, then takes the first dump, so that no change between the
// two is missed.
func newAddrWatcher(links bool) (_ *addrWatcher, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, os.NewSyscallError("socket netlink", err)
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}
	if links {
		// An interface that comes up is one to join groups on; without
		// addresses, and before Linux 6.14 announced IPv4 memberships,
		// nothing else tells of it.
		sa.Groups |= unix.RTMGRP_LINK
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind netlink", err)
	}
	// Membership changes have groups above 31, which only
	// NETLINK_ADD_MEMBERSHIP reaches; kernels before 6.13 (IPv6) and 6.14
	// (IPv4) have none, and groups are then dumped again on a miss.
	announced := true
	for _, g := range []int{unix.RTNLGRP_IPV4_MCADDR, unix.RTNLGRP_IPV6_MCADDR} {
		if unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g) != nil {
			announced = false
		}
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
	w.la.refreshGroups = w.refresh
	if !announced {
		w.la.refreshGroups = w.redump
	}
	return w, nil
}

// redump is refresh that dumps whether or not changes were announced.
func (w *addrWatcher) redump() bool { return w.update(true) }

// refresh drains pending notifications and, if there were any, dumps the
// addresses again. It reports whether the set was replaced.
func (w *addrWatcher) refresh() bool { return w.update(false) }

func (w *addrWatcher) update(force bool) bool {
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
	if !pending && !force {
		return false
	}
	set, err := dumpAddrs()
	if err != nil {
		return false
	}
	w.la.cur.Store(set)
	if w.onChange != nil {
		w.onChange()
	}
	return true
}

// watch applies address changes as they are announced, until the read
// deadline of the notification socket passes.
func (w *addrWatcher) watch() error {
	var gone error
	err := w.rc.Read(func(uintptr) bool {
		w.refresh()
		if w.gone != nil {
			gone = w.gone()
		}
		return gone != nil
	})
	if gone != nil {
		return gone
	}
	return err
}

func (w *addrWatcher) close() { w.file.Close() }

// dumpAddrs lists the host's addresses with RTM_GETADDR and its multicast
// memberships with RTM_GETMULTICAST. A dump that ran while addresses or
// links changed may have skipped some (the kernel marks it
// NLM_F_DUMP_INTR): it is taken again.
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
		set, ok := parseAddrs(msgs)
		if !ok {
			continue
		}
		if set.groups, ok = dumpGroups(); ok {
			return set, nil
		}
	}
	return nil, errors.New("udpstream: local addresses kept changing during every netlink dump")
}

// dumpGroups lists every interface's multicast groups, of both families.
// Where the kernel cannot dump a family's (IPv4 before Linux 6.14) it
// reads /proc/net/igmp or /proc/net/igmp6; a family the kernel lacks has
// none. It reports false if a dump was interrupted.
func dumpGroups() (map[membership]struct{}, bool) {
	groups := map[membership]struct{}{}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rib, err := syscall.NetlinkRIB(unix.RTM_GETMULTICAST, fam)
		var msgs []syscall.NetlinkMessage
		if err == nil {
			msgs, err = syscall.ParseNetlinkMessage(rib)
		}
		if err != nil {
			_ = readProcGroups(groups, fam == unix.AF_INET6)
			continue
		}
		if !parseGroups(groups, msgs) {
			return nil, false
		}
	}
	return groups, true
}

// parseGroups adds the memberships of an RTM_GETMULTICAST dump to groups,
// reporting false if the dump was interrupted.
func parseGroups(groups map[membership]struct{}, msgs []syscall.NetlinkMessage) bool {
	for i := range msgs {
		m := msgs[i]
		if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
			return false
		}
		if (m.Header.Type != unix.RTM_GETMULTICAST && m.Header.Type != unix.RTM_NEWMULTICAST) || len(m.Data) < unix.SizeofIfAddrmsg {
			continue
		}
		ifa := (*unix.IfAddrmsg)(unsafe.Pointer(&m.Data[0]))
		// The message is an ifaddrmsg with attributes, as RTM_NEWADDR's,
		// which is the only way the syscall package parses it.
		m.Header.Type = syscall.RTM_NEWADDR
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			continue
		}
		for _, a := range attrs {
			if g, ok := netip.AddrFromSlice(a.Value); ok && a.Attr.Type == unix.IFA_MULTICAST && g.IsMulticast() {
				groups[membership{g, int(ifa.Index)}] = struct{}{}
			}
		}
	}
	return true
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
		if local.Is6() && local.IsLinkLocalUnicast() {
			if set.linkLocal == nil {
				set.linkLocal = map[membership]struct{}{}
			}
			set.linkLocal[membership{local, int(ifa.Index)}] = struct{}{}
		}
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

// readProcGroups adds the memberships /proc lists for one family to
// groups.
func readProcGroups(groups map[membership]struct{}, v6 bool) error {
	name := "/proc/net/igmp"
	if v6 {
		name = "/proc/net/igmp6"
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	parseProcGroups(groups, b, v6)
	return nil
}

// parseProcGroups adds the memberships listed in /proc/net/igmp6 (v6) or
// /proc/net/igmp to groups. igmp6 has a line per membership: index, name,
// the group in hex, users, flags, timer. igmp has a line per interface,
// index first, then one per group of it, indented, the group first as
// the hexadecimal of its bytes read as a native-endian word.
func parseProcGroups(groups map[membership]struct{}, b []byte, v6 bool) {
	ifIndex := 0
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if v6 {
			if len(f) < 3 || len(f[2]) != 32 {
				continue
			}
			idx, err1 := strconv.Atoi(f[0])
			raw, err2 := hex.DecodeString(f[2])
			if err1 != nil || err2 != nil {
				continue
			}
			if g := netip.AddrFrom16([16]byte(raw)); g.IsMulticast() {
				groups[membership{g, idx}] = struct{}{}
			}
			continue
		}
		if i == 0 {
			continue // the heading
		}
		if line[0] != ' ' && line[0] != '\t' {
			ifIndex, _ = strconv.Atoi(f[0])
			continue
		}
		v, err := strconv.ParseUint(f[0], 16, 32)
		if err != nil || ifIndex == 0 {
			continue
		}
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], uint32(v))
		if g := netip.AddrFrom4(a); g.IsMulticast() {
			groups[membership{g, ifIndex}] = struct{}{}
		}
	}
}
