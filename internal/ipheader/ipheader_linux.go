// Package ipheader sets IP header fields of the datagrams an ordinary UDP
// socket sends: the demo and the tests send traffic with chosen TTL and
// TOS to show that a stream reports them.
package ipheader

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Set sets the TTL / hop limit and TOS / traffic class of the datagrams c
// sends; network ("udp4" or "udp6") is the family c was opened for. A zero
// value keeps the system's default.
func Set(c *net.UDPConn, network string, ttl, tos int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	set := func(fd uintptr, level, opt int, name string, v int) {
		if serr == nil && v != 0 {
			if err := unix.SetsockoptInt(int(fd), level, opt, v); err != nil {
				serr = os.NewSyscallError("setsockopt "+name, err)
			}
		}
	}
	err = rc.Control(func(fd uintptr) {
		if network == "udp6" {
			set(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS", ttl)
			set(fd, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, "IPV6_TCLASS", tos)
			return
		}
		set(fd, unix.IPPROTO_IP, unix.IP_TTL, "IP_TTL", ttl)
		set(fd, unix.IPPROTO_IP, unix.IP_TOS, "IP_TOS", tos)
	})
	if err != nil {
		return err
	}
	return serr
}
