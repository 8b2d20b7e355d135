// Package ipheader sets IP header fields of the datagrams an ordinary UDP
// socket sends: the demo and the tests send traffic with chosen TTL and
// TOS to show that a stream reports them.
package ipheader

import (
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// Set sets the TTL / hop limit and TOS / traffic class of the datagrams c
// sends; network ("udp4" or "udp6") is the family c was opened for. A zero
// value keeps the system's default.
func Set(c *net.UDPConn, network string, ttl, tos int) error {
	return control(c, func(fd int) error {
		if network == "udp6" {
			if err := setInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS", ttl); err != nil {
				return err
			}
			return setInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, "IPV6_TCLASS", tos)
		}
		if err := setInt(fd, unix.IPPROTO_IP, unix.IP_TTL, "IP_TTL", ttl); err != nil {
			return err
		}
		return setInt(fd, unix.IPPROTO_IP, unix.IP_TOS, "IP_TOS", tos)
	})
}

// SetMulticast makes the IPv4 multicast datagrams c sends leave by the
// interface of address from, with the given TTL.
func SetMulticast(c *net.UDPConn, from netip.Addr, ttl int) error {
	return control(c, func(fd int) error {
		if err := setInt(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, "IP_MULTICAST_TTL", ttl); err != nil {
			return err
		}
		return os.NewSyscallError("setsockopt IP_MULTICAST_IF", unix.SetsockoptInet4Addr(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, from.As4()))
	})
}

// control runs set on c's socket and returns its error.
func control(c *net.UDPConn, set func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = set(int(fd)) }); err != nil {
		return err
	}
	return serr
}

// setInt sets an integer socket option; a zero value keeps the system's
// default.
func setInt(fd, level, opt int, name string, v int) error {
	if v == 0 {
		return nil
	}
	return os.NewSyscallError("setsockopt "+name, unix.SetsockoptInt(fd, level, opt, v))
}
