package udpstream

import (
	"bytes"
	"testing"
)

// TestBufferRelease checks the life of a Buffer: its bytes are a bounded
// copy, its memory is reused once released, and a second release, or
// the release of a stale copy, gives away nothing another Buffer holds.
func TestBufferRelease(t *testing.T) {
	var zero Buffer
	zero.Release()
	if zero.Bytes() != nil || zero.Len() != 0 {
		t.Fatal("the zero Buffer holds bytes")
	}
	if b := newBuffer([]byte{}); b.Len() != 0 || b.slot != nil {
		t.Fatal("an empty payload took pooled memory")
	}
	for _, n := range []int{1, 255, 256, 257, 1400, 1<<16 - 1, 1 << 16} {
		p := payloadOf(n)
		a := newBuffer(p)
		if !bytes.Equal(a.Bytes(), p) || cap(a.Bytes()) != n || a.Len() != n {
			t.Fatalf("%d bytes: a copy of %d bytes, capacity %d", n, a.Len(), cap(a.Bytes()))
		}
		if got := len(a.slot.mem); got < n || got > max(2*n, 256) {
			t.Fatalf("%d bytes in %d bytes of pooled memory", n, got)
		}
		stale := a
		a.Release()
		a.Release()     // again: nothing
		stale.Release() // a copy of a released Buffer: nothing
		// Whoever gets the memory now keeps it through the stale releases.
		for range 8 {
			b := newBuffer(bytes.Repeat([]byte{0xab}, n))
			stale.Release()
			c := newBuffer(bytes.Repeat([]byte{0xcd}, n))
			if b.slot == c.slot || !bytes.Equal(b.Bytes(), bytes.Repeat([]byte{0xab}, n)) {
				t.Fatalf("%d bytes: a stale release gave away the memory of a Buffer in use", n)
			}
			b.Release()
			c.Release()
		}
	}
	// More than a UDP payload can hold: memory of its own, not pooled.
	big := newBuffer(payloadOf(1<<16 + 1))
	if big.slot != nil || big.Len() != 1<<16+1 || cap(big.Bytes()) != big.Len() {
		t.Fatal("an oversized copy went to the pool")
	}
	big.Release()
}
