package main

import (
	"bufio"
	"bytes"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpstream/udpstream"
)

// countingWriter counts the writes made to it and keeps what they wrote.
type countingWriter struct {
	writes int
	buf    bytes.Buffer
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.writes++
	return w.buf.Write(b)
}

// pumpPrinting runs pump as listen does: lines into a buffer over w,
// flushed by pump.
func pumpPrinting(ch <-chan udpstream.Packet[[]byte], w *bufio.Writer) error {
	pr := newPrinter(w, true)
	pr.names.lookup = func(int) string { return "lo" }
	return pump(ch, func(p udpstream.Packet[[]byte]) (bool, error) {
		return true, pr.packet(p)
	}, w.Flush)
}

// TestPumpBurst checks the first half of keeping up: datagrams that are
// already waiting go out in far fewer writes than lines.
func TestPumpBurst(t *testing.T) {
	const n = 200
	ch := make(chan udpstream.Packet[[]byte], n)
	for range n {
		ch <- udpstream.Packet[[]byte]{Value: []byte("burst"), Header: testHeader()}
	}
	close(ch)
	var w countingWriter
	if err := pumpPrinting(ch, bufio.NewWriterSize(&w, outputBuffer)); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(w.buf.String(), "\n"); lines != n {
		t.Fatalf("%d lines, want %d", lines, n)
	}
	// 200 lines of about 350 bytes fill the 64 KiB buffer once or twice.
	if w.writes > n/20 {
		t.Errorf("%d lines in %d writes: want them buffered while more are waiting", n, w.writes)
	}
	t.Logf("%d lines in %d writes", n, w.writes)
}

// writeNotifier passes each write on a channel, for a test to see when
// output leaves the tool.
type writeNotifier chan string

func (w writeNotifier) Write(b []byte) (int, error) {
	w <- string(b)
	return len(b), nil
}

// TestPumpIdle checks the second half: when no datagram follows, the line
// of the last one is written at once, not held until more traffic comes.
func TestPumpIdle(t *testing.T) {
	ch := make(chan udpstream.Packet[[]byte], 16)
	w := make(writeNotifier, 16)
	done := make(chan error)
	go func() { done <- pumpPrinting(ch, bufio.NewWriterSize(w, outputBuffer)) }()
	for _, payload := range []string{"one", "two"} {
		ch <- udpstream.Packet[[]byte]{Value: []byte(payload), Header: testHeader()}
		select {
		case got := <-w:
			if !strings.Contains(got, hexOf(payload)) || strings.Count(got, "\n") != 1 {
				t.Errorf("written %q, want the line of %q", got, payload)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the line of %q was not written within 10s of an idle stream", payload)
		}
	}
	close(ch)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(w) != 0 {
		t.Errorf("more written after the end: %q", <-w)
	}
}

// shortWriter accepts limit bytes, then fails as a closed pipe does.
type shortWriter struct{ limit int }

func (w *shortWriter) Write(b []byte) (int, error) {
	n := min(len(b), w.limit)
	w.limit -= n
	if n < len(b) {
		return n, syscall.EPIPE
	}
	return n, nil
}

// TestTally checks that only the datagrams whose record was written whole
// count, however the writes cut the records.
func TestTally(t *testing.T) {
	records := []pendingRecord{{10, true}, {5, false}, {10, true}, {7, true}}
	for _, tc := range []struct {
		limit int
		want  uint64
	}{
		{0, 0}, {9, 0}, {10, 1}, {15, 1}, {24, 1}, {25, 2}, {31, 2}, {32, 3}, {100, 3},
	} {
		for _, chunk := range []int{1, 3, 32} {
			tl := &tally{w: &shortWriter{limit: tc.limit}}
			var all []byte
			for _, r := range records {
				tl.add(r.size, r.datagram)
				all = append(all, bytes.Repeat([]byte{'x'}, r.size)...)
			}
			for len(all) > 0 {
				n, err := tl.Write(all[:min(chunk, len(all))])
				all = all[n:]
				if err != nil {
					break
				}
			}
			if tl.written != tc.want {
				t.Errorf("%d bytes accepted, in writes of %d: %d datagrams written, want %d", tc.limit, chunk, tl.written, tc.want)
			}
		}
	}
}
