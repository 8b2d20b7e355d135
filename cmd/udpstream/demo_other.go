//go:build !linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
)

// The demo's kernel parts exist on Linux only, as does the library's
// receiver: elsewhere Open fails first and these are never reached.

func setHeaderFields(*net.UDPConn, string, int, int) error {
	return fmt.Errorf("setting TTL and TOS on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

func setMulticast(*net.UDPConn, netip.Addr, int) error {
	return fmt.Errorf("sending multicast on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

func loopbackUp() error {
	return fmt.Errorf("bringing loopback up on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

func demoInNamespace(_ context.Context, _ []string, _, stderr io.Writer) int {
	return fail(stderr, fmt.Errorf("demo: namespaces exist on Linux only, not on %s: %w", runtime.GOOS, errors.ErrUnsupported))
}
