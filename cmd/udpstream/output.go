package main

import "io"

// tally sits beneath an output buffer and counts the datagrams whose
// record (a line, a capture block) reached the writer whole: when the
// reader goes away with records still buffered, the count says what it
// got, not what was buffered.
type tally struct {
	w       io.Writer
	pending []pendingRecord // in the buffer above, in order
	head    int             // bytes of pending[0] already written
	written uint64
}

// pendingRecord is a record in the buffer above a tally.
type pendingRecord struct {
	size     int
	datagram bool // a delivered datagram's, not an error line's or a file header's
}

// add notes a record of size bytes, before it is written to the buffer
// above (which may pass it straight through).
func (t *tally) add(size int, datagram bool) {
	t.pending = append(t.pending, pendingRecord{size, datagram})
}

func (t *tally) Write(b []byte) (int, error) {
	n, err := t.w.Write(b)
	t.advance(n)
	return n, err
}

// advance accounts for n more bytes written.
func (t *tally) advance(n int) {
	i := 0
	for ; i < len(t.pending); i++ {
		left := t.pending[i].size - t.head
		if n < left {
			t.head += n
			break
		}
		n -= left
		t.head = 0
		if t.pending[i].datagram {
			t.written++
		}
	}
	if i == len(t.pending) {
		t.pending = t.pending[:0] // drained: reuse the array
	} else {
		t.pending = t.pending[i:]
	}
}
