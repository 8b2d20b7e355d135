package udpstream

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// Buffer is a copy of a datagram's payload, made by the PayloadBuffer
// decoder, in memory that later datagrams reuse once it is released.
// Its zero value holds no bytes.
//
// Releasing is optional: a Buffer never released is freed by the garbage
// collector as any value is, and only its memory's reuse is lost.
type Buffer struct {
	b    []byte
	slot *bufferSlot
	gen  uint64 // slot's generation when b was copied into it
}

// Bytes returns the copy, whose capacity is its length. It is valid until
// Release is called on this Buffer or on any copy of it; after that its
// memory holds other datagrams' bytes.
func (b Buffer) Bytes() []byte { return b.b }

// Len returns the number of bytes in the copy.
func (b Buffer) Len() int { return len(b.b) }

// Release hands the Buffer's memory back for later datagrams. Neither the
// Buffer nor the slices Bytes returned may be used after it. It may be
// called from any goroutine; releasing a Buffer again, or a copy of one
// already released, does nothing.
func (b Buffer) Release() {
	s := b.slot
	if s == nil || !s.gen.CompareAndSwap(b.gen, b.gen+1) {
		return
	}
	bufferPools[s.class].Put(s)
}

// PayloadBuffer is a Decoder that copies the UDP payload into a Buffer
// taken from a pool shared by every stream, without allocating once the
// pool holds enough released Buffers. It is for programs that receive at
// high rates and are done with each payload soon: Payload allocates each
// copy, and at hundreds of thousands of datagrams a second the garbage
// collection that memory brings costs more than the receiving. The memory
// of a Buffer is the payload's size rounded up to a power of two, at
// least 256 bytes; the pool keeps what was released, and the garbage
// collector frees what stays unused there.
func PayloadBuffer(d *Datagram) (Buffer, error) {
	return newBuffer(d.Payload()), nil
}

// bufferSlot is a pooled piece of memory and the count of the times it
// was released, which tells a Buffer still holding it from a stale copy.
type bufferSlot struct {
	mem   []byte
	gen   atomic.Uint64
	class int
}

// Pooled memory comes in powers of two from 1<<minBufferShift to
// 1<<maxBufferShift bytes, the largest UDP payload's size: a payload
// fills more than half of its Buffer's memory, or all of the smallest.
const (
	minBufferShift = 8
	maxBufferShift = 16
)

// bufferPools holds released memory, by size: pool i holds 256<<i bytes.
var bufferPools [maxBufferShift - minBufferShift + 1]sync.Pool

// newBuffer copies p into pooled memory; more bytes than a UDP payload
// can hold get memory of their own, which is not pooled.
func newBuffer(p []byte) Buffer {
	n := len(p)
	if n == 0 {
		return Buffer{}
	}
	class := max(bits.Len(uint(n-1))-minBufferShift, 0)
	if class >= len(bufferPools) {
		return Buffer{b: clipClone(p)}
	}
	s, _ := bufferPools[class].Get().(*bufferSlot)
	if s == nil {
		s = &bufferSlot{mem: make([]byte, 1<<(class+minBufferShift)), class: class}
	}
	b := Buffer{b: s.mem[:n:n], slot: s, gen: s.gen.Load()}
	copy(b.b, p)
	return b
}
