package udpstream

import (
	"bytes"
	"context"
	"runtime"
	"strconv"
	"sync"
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
// byte and drops it (or releases it), against a decoder that copies
// nothing: the cost of the copy, its allocations and the garbage
// collection they bring.
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
			b.Run(name+"PayloadBuffer", func(b *testing.B) {
				benchDecoder(b, PayloadBuffer, frame, func(v Buffer) byte {
					x := touchValue(v.Bytes())
					v.Release()
					return x
				})
			})
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

// copyingDecoders are the built-in decoders that copy, each as one that
// returns the bytes it copied.
var copyingDecoders = []struct {
	name string
	dec  Decoder[[]byte]
	ip   bool // the copy is of the whole IP datagram
}{
	{"Payload", Payload, false},
	{"Raw", Raw, true},
	{"PayloadBuffer", func(d *Datagram) ([]byte, error) {
		b, err := PayloadBuffer(d)
		return b.Bytes(), err
	}, false},
}

// decodeFrames runs frames through a handler with dec and returns the
// values in order.
func decodeFrames(t *testing.T, dec Decoder[[]byte], fam uint8, frames [][]byte) [][]byte {
	t.Helper()
	out := make(chan Packet[[]byte], len(frames))
	h := testHandler(dec, out)
	h.fam = fam
	m := frameMeta{ifIndex: 1, vouched: true}
	for _, f := range frames {
		if err := h.handle(context.Background(), f, &m); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(out)
	var vals [][]byte
	for p := range out {
		if p.Err != nil {
			t.Fatal(p.Err)
		}
		vals = append(vals, p.Value)
	}
	if len(vals) != len(frames) {
		t.Fatalf("%d values of %d frames", len(vals), len(frames))
	}
	return vals
}

// TestDecoderCopiesBounded checks that what the copying decoders return
// is a copy of its own bytes and no more: its capacity is its length, so
// that appending to one copy and writing to what was appended changes no
// other copy, made just before or after it from the same memory, and the
// frame it came from can change under it.
func TestDecoderCopiesBounded(t *testing.T) {
	sizes := []int{0, 1, 60, 64, 200, 511, 512, 513, 1400, 1472, 9000}
	for _, dc := range copyingDecoders {
		for _, fam := range []uint8{4, 6} {
			var frames, want [][]byte
			for i, n := range sizes {
				f := udpFrame(fam, 4000+uint16(i), payloadOf(n))
				frames = append(frames, f)
				if dc.ip {
					want = append(want, bytes.Clone(f))
				} else {
					want = append(want, payloadOf(n))
				}
			}
			vals := decodeFrames(t, dc.dec, fam, frames)
			for _, f := range frames {
				clear(f) // the ring slot reused
			}
			for i, v := range vals {
				if !bytes.Equal(v, want[i]) {
					t.Fatalf("%s ipv%d: copy %d (%d bytes) is not what was received", dc.name, fam, i, len(want[i]))
				}
				if cap(v) != len(v) {
					t.Errorf("%s ipv%d: a %d-byte copy has capacity %d", dc.name, fam, len(v), cap(v))
				}
			}
			for i := range vals {
				grown := append(vals[i], bytes.Repeat([]byte{0xee}, 600)...)
				for k := len(vals[i]); k < len(grown); k++ {
					grown[k] ^= 0x55
				}
				for j, v := range vals {
					if !bytes.Equal(v, want[j]) {
						t.Fatalf("%s ipv%d: appending to the %d-byte copy changed the %d-byte copy", dc.name, fam, len(want[i]), len(want[j]))
					}
				}
			}
		}
	}
}

// allocsPerDatagram returns the heap allocations per datagram, as a
// fraction, of handling n frames with dec one at a time and receiving
// each, calling done on each value.
func allocsPerDatagram[T any](t *testing.T, dec Decoder[T], frame []byte, n int, done func(T)) float64 {
	t.Helper()
	out := make(chan Packet[T], 1)
	h := testHandler(dec, out)
	h.fam = frame[0] >> 4
	m := frameMeta{ifIndex: 1, vouched: true}
	ctx := context.Background()
	one := func() {
		if err := h.handle(ctx, frame, &m); err != nil {
			t.Fatal(err)
		}
		if err := h.flush(ctx); err != nil {
			t.Fatal(err)
		}
		p := <-out
		if p.Err != nil {
			t.Fatal(p.Err)
		}
		done(p.Value)
	}
	for range 100 {
		one() // warm up
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		one()
	}
	runtime.ReadMemStats(&after)
	return float64(after.Mallocs-before.Mallocs) / float64(n)
}

// TestDecoderAllocs checks the allocations per datagram of the built-in
// copying decoders: a small copy is carved from a slab, one allocation
// for many; a large one is an allocation of its own; a released Buffer's
// memory is reused.
func TestDecoderAllocs(t *testing.T) {
	const n = 4096
	for _, fam := range []uint8{4, 6} {
		for _, size := range []int{64, 1400} {
			frame := udpFrame(fam, 4000, payloadOf(size))
			keep := func([]byte) {}
			pl := allocsPerDatagram(t, Payload, frame, n, keep)
			raw := allocsPerDatagram(t, Raw, frame, n, keep)
			buf := allocsPerDatagram(t, PayloadBuffer, frame, n, func(b Buffer) { b.Release() })
			t.Logf("ipv%d, %d-byte payload: allocations per datagram: Payload %.3f, Raw %.3f, PayloadBuffer %.3f", fam, size, pl, raw, buf)
			if size < slabMaxCopy && (pl > 0.05 || raw > 0.05) {
				t.Errorf("ipv%d, %d-byte payload: Payload %.3f, Raw %.3f allocations per datagram, want a slab's for many", fam, size, pl, raw)
			}
			if pl > 1.05 || raw > 1.05 {
				t.Errorf("ipv%d, %d-byte payload: Payload %.3f, Raw %.3f allocations per datagram, want at most one", fam, size, pl, raw)
			}
			if buf > 0.01 && !raceEnabled {
				t.Errorf("ipv%d, %d-byte payload: PayloadBuffer %.3f allocations per datagram released, want none", fam, size, buf)
			}
		}
	}
}

// TestDecodersConcurrent runs the copying decoders on two receive
// goroutines at once, as a stream over both families does, into one
// channel, and checks that every copy holds its own datagram: under the
// race detector, it also checks that the goroutines share nothing
// unsynchronized.
func TestDecodersConcurrent(t *testing.T) {
	const n = 3000
	for _, dc := range copyingDecoders {
		out := make(chan Packet[[]byte], 64)
		var wg sync.WaitGroup
		for _, fam := range []uint8{4, 6} {
			h := testHandler(dc.dec, out)
			h.fam = fam
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := frameMeta{ifIndex: 1, vouched: true}
				for i := range n {
					// The payload says which datagram it is, in every byte.
					pl := bytes.Repeat([]byte{fam, byte(i), byte(i >> 8)}, 1+i%500)
					f := udpFrame(fam, 4000, pl)
					if err := h.handle(context.Background(), f, &m); err != nil {
						t.Error(err)
						return
					}
					clear(f)
				}
				if err := h.flush(context.Background()); err != nil {
					t.Error(err)
				}
			}()
		}
		go func() { wg.Wait(); close(out) }()
		var held [][]byte
		got := 0
		for p := range out {
			v := p.Value
			if dc.ip {
				v = v[len(v)-(int(p.Header.UDPLength)-udpHeaderLen):]
			}
			if len(v)%3 != 0 || len(v) == 0 {
				t.Fatalf("%s: a payload of %d bytes", dc.name, len(v))
			}
			held = append(held, v)
			got++
		}
		if got != 2*n {
			t.Fatalf("%s: %d datagrams of %d", dc.name, got, 2*n)
		}
		for _, v := range held {
			if !bytes.Equal(v, bytes.Repeat(v[:3], len(v)/3)) {
				t.Fatalf("%s: a copy holds another datagram's bytes", dc.name)
			}
		}
	}
}
