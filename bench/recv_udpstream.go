//go:build linux

package main

import (
	"context"

	"github.com/udpstream/udpstream"
)

// touchDecoder reads the payload's first and last byte in place, in the
// ring, and copies nothing.
func touchDecoder(d *udpstream.Datagram) (uint16, error) {
	return touch(d.Payload()), nil
}

// openUDPStream is udpstream with default options and a decoder that
// copies nothing, consumed by ranging over the channel.
func openUDPStream(c recvConfig, m *meter) (*session, error) {
	return openStream(c, m, touchDecoder, func(v uint16) uint16 { return v })
}

// openUDPStreamFanout is openUDPStream with two packet sockets per family
// in a fanout group, each with a receive goroutine of its own.
func openUDPStreamFanout(c recvConfig, m *meter) (*session, error) {
	return openStream(c, m, touchDecoder, func(v uint16) uint16 { return v }, udpstream.WithFanout(2))
}

// openUDPStreamSocket is openUDPStream in socket mode: the UDP socket
// alone, with control messages, no packet socket.
func openUDPStreamSocket(c recvConfig, m *meter) (*session, error) {
	return openStream(c, m, touchDecoder, func(v uint16) uint16 { return v }, udpstream.WithMode(udpstream.ModeSocket))
}

// openUDPStreamKernel is openUDPStream in kernel-verdict mode: the ring's
// datagrams, each delivered once its twin reaches the port's UDP socket.
func openUDPStreamKernel(c recvConfig, m *meter) (*session, error) {
	return openStream(c, m, touchDecoder, func(v uint16) uint16 { return v }, udpstream.WithMode(udpstream.ModeKernel))
}

// openUDPStreamCopy is udpstream with default options and the built-in
// Payload decoder, which copies each payload into a new slice.
func openUDPStreamCopy(c recvConfig, m *meter) (*session, error) {
	return openStream(c, m, udpstream.Payload, touch)
}

// openUDPStreamBuffer is udpstream with default options and the built-in
// PayloadBuffer decoder, each Buffer released once its bytes are read.
func openUDPStreamBuffer(c recvConfig, m *meter) (*session, error) {
	return openStream(c, m, udpstream.PayloadBuffer, func(b udpstream.Buffer) uint16 {
		v := touch(b.Bytes())
		b.Release()
		return v
	})
}

func openStream[T any](c recvConfig, m *meter, dec udpstream.Decoder[T], touched func(T) uint16, opts ...udpstream.Option) (*session, error) {
	s, err := udpstream.Open(context.Background(), uint16(c.port), dec, opts...)
	if err != nil {
		return nil, err
	}
	l := m.newLane()
	loop := func() {
		for p := range s.Packets() {
			if p.Err != nil {
				l.other++
				continue
			}
			if l.take(p.Header.Src, p.Header.Dst.Addr(), p.Header.TTL, touched(p.Value)) {
				return
			}
		}
	}
	return &session{
		loops:     []func(){loop},
		interrupt: func() { _ = s.Close() },
		close:     func() { _ = s.Close() },
		extra: func() map[string]uint64 {
			st := s.Stats()
			return map[string]uint64{
				"stream_delivered": st.Delivered,
				"stream_dropped":   st.Dropped(),
				"kernel_drops":     st.KernelDrops,
				"rejected":         st.Rejected,
				"socket_only":      st.SocketOnly,
			}
		},
	}, nil
}
