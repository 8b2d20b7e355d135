package udpstream

import (
	"context"
	"strconv"
	"testing"
)

// touchValue reads the first and last byte of a payload, as a consumer
// that looks at what it got does.
func touchValue(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0] ^ b[len(b)-1]
}

// udpFrame is a frame of family fam with a UDP datagram from port sport
// to testPort carrying payload.
func udpFrame(fam uint8, sport uint16, payload []byte) []byte {
	if fam == 6 {
		return v6().udp(sport, testPort, payload)
	}
	return v4().udp(sport, testPort, payload)
}

// BenchmarkDecoders measures the built-in copying decoders through the
// handler's path, with a consumer that reads each value's first and last
// byte and drops it, against a decoder that copies nothing: the cost of
// the copy, its allocations and the garbage collection they bring.
func BenchmarkDecoders(b *testing.B) {
	for _, size := range []int{64, 1400} {
		for _, fam := range []uint8{4, 6} {
			frame := udpFrame(fam, 4000, payloadOf(size))
			name := "v" + strconv.Itoa(int(fam)) + "/" + strconv.Itoa(size) + "/"
			b.Run(name+"view", func(b *testing.B) {
				benchDecoder(b, func(d *Datagram) ([]byte, error) { return nil, nil }, frame, touchValue)
			})
			b.Run(name+"Payload", func(b *testing.B) { benchDecoder(b, Payload, frame, touchValue) })
			b.Run(name+"Raw", func(b *testing.B) { benchDecoder(b, Raw, frame, touchValue) })
		}
	}
}

// benchDecoder hands b.N copies of frame through a handler with dec to a
// consumer that calls use on each value, and checks that all arrived.
func benchDecoder[T any](b *testing.B, dec Decoder[T], frame []byte, use func(T) byte) {
	out := make(chan Packet[T], 256)
	h := testHandler(dec, out)
	h.fam = frame[0] >> 4
	done := make(chan int)
	go func() {
		n := 0
		var x byte
		for p := range out {
			x ^= use(p.Value)
			n++
		}
		sink = x
		done <- n
	}()
	m := frameMeta{ifIndex: 1, vouched: true}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	for range b.N {
		if err := h.handle(ctx, frame, &m); err != nil {
			b.Fatal(err)
		}
	}
	if err := h.flush(ctx); err != nil {
		b.Fatal(err)
	}
	close(out)
	if n := <-done; n != b.N {
		b.Fatalf("delivered %d of %d", n, b.N)
	}
}

// sink keeps what a benchmark's consumer read from being optimized away.
var sink byte
