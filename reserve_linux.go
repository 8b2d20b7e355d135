package udpstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// reservePort binds a UDP socket to the port on the unspecified address so
// that no other process takes it and the kernel does not answer ICMP port
// unreachable. Unless it is to receive (socket mode), a drop-all filter,
// attached before bind, keeps it from ever queueing data: the packet
// sockets receive the datagrams. With reusePort it binds with
// SO_REUSEPORT, so that the stream's other sockets may share the port.
// With port 0 the kernel picks the port. For "udp" the socket is
// dual-stack ([::] with IPV6_V6ONLY off), or IPv4 where the host has no
// IPv6.
func reservePort(network string, port uint16, ifName string, receive, reusePort bool) (*net.UDPConn, uint16, error) {
	lc := net.ListenConfig{
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if !receive {
					if serr = attachFilter(int(fd), dropAllFilter); serr != nil {
						return
					}
				}
				if reusePort {
					if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
						serr = os.NewSyscallError("setsockopt SO_REUSEPORT", serr)
						return
					}
				}
				if ifName != "" {
					// Reserve the port only where the stream listens; other
					// interfaces keep the kernel's ordinary behaviour.
					serr = unix.BindToDevice(int(fd), ifName)
					if serr != nil {
						serr = os.NewSyscallError("setsockopt SO_BINDTODEVICE", serr)
					}
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	addr := ":" + strconv.Itoa(int(port))
	switch network {
	case "udp4":
		addr = "0.0.0.0" + addr
	case "udp6":
		addr = "[::]" + addr
	}
	pc, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, 0, fmt.Errorf("udpstream: port %d is in use by another socket (WithMonitor observes a port another process owns): %w", port, err)
		}
		if errors.Is(err, os.ErrPermission) && needsBindService(port) {
			return nil, 0, fmt.Errorf("udpstream: reserving UDP port %d needs CAP_NET_BIND_SERVICE (a port below net.ipv4.ip_unprivileged_port_start): "+
				"run as root, or grant it with 'sudo setcap cap_net_raw,cap_net_bind_service=ep /path/to/program': %w", port, err)
		}
		return nil, 0, fmt.Errorf("udpstream: reserving UDP port %d: %w", port, err)
	}
	c := pc.(*net.UDPConn)
	return c, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// needsBindService reports whether binding port takes CAP_NET_BIND_SERVICE:
// whether it is below net.ipv4.ip_unprivileged_port_start, which governs
// IPv6 too (1024 when it cannot be read). Port 0 binds a free port above.
func needsBindService(port uint16) bool {
	if port == 0 {
		return false
	}
	start := 1024
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			start = n
		}
	}
	return int(port) < start
}
