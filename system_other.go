//go:build !linux

package udpstream

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
)

// system is the kernel side of a stream; there is none outside Linux.
type system struct {
	port        uint16
	mode        Mode
	sources     []source
	local       *localAddrs
	reserve     any
	verdict     *verdicts
	kernelDrops atomic.Uint64
}

type source interface{ family() uint8 }

type sender struct {
	conn  any
	def   SendOptions
	local *localAddrs
}

func (*sender) send([]byte, netip.Addr, netip.AddrPort, int, SendOptions) error {
	return errors.ErrUnsupported
}

func (*system) newSender(SendOptions) *sender { return nil }

func openSystem(*config, uint16) (*system, error) {
	return nil, fmt.Errorf("udpstream: not implemented on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

func (*system) run(context.Context, func(int) func(context.Context) error) error { return nil }
func (*system) pollKernelDrops()                                                 {}
func (*system) close()                                                           {}

func receive[T any](context.Context, source, *handler[T]) error { return nil }
