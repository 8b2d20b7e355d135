package udpstream

import "bytes"

// slab is the memory one receive goroutine's built-in decoders carve
// their copies of small datagrams from: one allocation holds the copies
// of many, where an allocation per copy cost about as much as the copy.
// Each copy is a slice of it whose capacity is its length, so that
// appending to one reallocates it and cannot reach the next. The garbage
// collector frees a slab once no copy of it is reachable: a copy the
// program holds keeps its whole slab, slabSize bytes, alive. Larger
// copies gain nothing from a slab (their cost is the copy and the garbage
// collection of their bytes) and get an allocation of their own.
type slab struct {
	free []byte // the unused rest of the current allocation
}

const (
	// slabSize is the size of one slab: 128 copies of 64 bytes.
	slabSize = 8 << 10
	// slabMaxCopy is the largest copy carved from a slab; one slab holds
	// at least 16 of them.
	slabMaxCopy = 512
)

// clone returns a copy of b whose capacity is its length: nil for nil,
// and for an empty b a slice of no bytes that keeps nothing alive. A nil
// slab allocates each copy on its own.
func (s *slab) clone(b []byte) []byte {
	n := len(b)
	switch {
	case b == nil:
		return nil
	case n == 0:
		return []byte{}
	case s == nil || n > slabMaxCopy:
		c := bytes.Clone(b) // not zeroed first, as make would be
		return c[:n:n]
	}
	if len(s.free) < n {
		s.free = make([]byte, slabSize)
	}
	c := s.free[:n:n]
	s.free = s.free[n:]
	copy(c, b)
	return c
}
