package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests run the tool in-process, under the race detector, against
// real traffic in the test's own network namespace.

// A setup error of the library is one line: the tool's prefix, not the
// library's twice. An interface that does not exist is a fact of the
// system, not of the command line: a runtime error, said plainly. The
// interface is looked up before anything else, so this needs no namespace.
func TestSetupError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-i", "no-such-if-x"}, &stdout, &stderr)
	if code != exitRuntime {
		t.Errorf("exit status %d, want %d", code, exitRuntime)
	}
	const want = "udpstream: no interface \"no-such-if-x\" (see ip link)\n"
	if msg := stderr.String(); msg != want {
		t.Errorf("stderr %q, want %q", msg, want)
	}
}

// A capture file that cannot be created is a runtime error, said before
// anything listens.
func TestCaptureFileError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-port", "9", "-w", "/nonexistent-dir/x.pcapng"}, &stdout, &stderr)
	const want = "udpstream: -w: open /nonexistent-dir/x.pcapng: no such file or directory\n"
	if code != exitRuntime || stderr.String() != want || stdout.Len() != 0 {
		t.Errorf("exit %d, stderr %q, stdout %q; want %d and %q", code, stderr.String(), stdout.String(), exitRuntime, want)
	}
}

// loIndex is the index of loopback in the test's namespace.
func loIndex(t *testing.T) int {
	t.Helper()
	ifi, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	return ifi.Index
}

func ptr[T any](v T) *T { return &v }

// TestRunJSON sends datagrams with chosen header fields over both families
// and checks every field of the lines printed for them.
func TestRunJSON(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, mode := range []string{"ring", "kernel"} {
		t.Run(mode, func(t *testing.T) { testRunJSON(t, mode) })
	}
}

// testRunJSON is TestRunJSON in a mode that sees every header field.
func testRunJSON(t *testing.T, mode string) {
	args := []string{"-port", "0", "-json", "-count", "3"}
	if mode != "ring" {
		args = append(args, "-mode", mode)
	}
	p := startRun(t, args...)
	port := p.port(t)
	if p.mode != mode {
		t.Fatalf("mode %q, want %s", p.mode, mode)
	}

	nop := []byte{1, 1, 1, 0} // NOP, NOP, NOP, End of Options List
	s1 := sender(t, "udp4", sendOpts{ttl: 42, tos: 0x2a, df: 1, ipOptions: nop})
	s2 := sender(t, "udp6", sendOpts{ttl: 7, tos: 0xb9, dstOpts: true})
	s3 := sender(t, "udp4", sendOpts{ttl: 200, df: -1})
	want := map[netip.AddrPort]wantDatagram{
		localAddr(s1): {ttl: 42, tos: 0x2a, df: ptr(true), ipOptions: "01010100", extHeaders: []int{}, payload: []byte("one")},
		localAddr(s2): {ttl: 7, tos: 0xb9, extHeaders: []int{60}, payload: []byte("two\x00\xff\"\n")},
		localAddr(s3): {ttl: 200, df: ptr(false), extHeaders: []int{}, payload: []byte{}},
	}
	for _, s := range []*net.UDPConn{s1, s2, s3} {
		from := localAddr(s)
		w := want[from]
		w.src, w.dst = from, netip.AddrPortFrom(from.Addr(), port)
		w.fragments, w.ifname, w.ifindex = 1, "lo", loIndex(t)
		want[from] = w
		send(t, s, w.dst, w.payload)
	}

	checkRun(t, p, want)
}

// checkRun reads a -json line from each source of want, in any order,
// checks it, and then the exit of a run given -count len(want).
func checkRun(t *testing.T, p *proc, want map[netip.AddrPort]wantDatagram) {
	t.Helper()
	n := len(want)
	for range n {
		m := checkSchema(t, next(t, p.stdout, "stdout"), false)
		from := netip.AddrPortFrom(netip.MustParseAddr(m["src"].(string)), uint16(m["sport"].(float64)))
		w, ok := want[from]
		if !ok {
			t.Fatalf("line from %v, which sent nothing or was printed twice", from)
		}
		delete(want, from)
		checkDatagram(t, m, w)
	}
	code, stdout, stderr := p.wait(t)
	if rest := checkSummary(t, stderr, n); code != exitOK || len(stdout) != 0 || len(rest) != 0 {
		t.Errorf("after -count %d: exit %d, more stdout %q, stderr %q", n, code, stdout, stderr)
	}
}

// TestRunPortErrors checks that -port-errors prints a datagram to another
// port as an error line, which -count does not count, and -stats as a drop.
func TestRunPortErrors(t *testing.T) {
	if !inNetns(t) {
		return
	}
	p := startRun(t, "-port", "0", "-json", "-count", "2", "-port-errors", "-stats")
	port := p.port(t)

	// The other port is bound, so that nothing answers ICMP unreachable.
	sink, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(loopback("udp4", 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	other := localAddr(sink)

	s := sender(t, "udp4", sendOpts{})
	send(t, s, other, []byte("stray"))
	m := checkSchema(t, next(t, p.stdout, "stdout"), true)
	if m["dport"] != float64(other.Port()) || m["len"] != 5.0 || m["udp_len"] != 13.0 ||
		!strings.Contains(m["error"].(string), "not for the listened port") {
		t.Errorf("error line %v", m)
	}

	for _, payload := range []string{"a", "b"} {
		send(t, s, loopback("udp4", port), []byte(payload))
		m := checkSchema(t, next(t, p.stdout, "stdout"), false)
		if m["payload"] != hexOf(payload) || m["dport"] != float64(port) {
			t.Errorf("line %v, want payload %q to port %d", m, payload, port)
		}
	}
	code, stdout, stderr := p.wait(t)
	if code != exitOK || len(stdout) != 0 || len(stderr) != 1 {
		t.Fatalf("exit %d, more stdout %q, stderr %q; want 0 and the stats", code, stdout, stderr)
	}
	st := checkStats(t, stderr[0])
	if st["delivered"] != 2 || st["other_port"] != 1 || st["dropped"] != 1 {
		t.Errorf("stats %s: want delivered 2, other_port 1, dropped 1", stderr[0])
	}
}

// TestRunCancel checks the end by signal, in-process: what was received
// is printed, the exit status is 0 and -stats counts exactly the lines
// printed, however many were still on their way.
func TestRunCancel(t *testing.T) {
	if !inNetns(t) {
		return
	}
	p := startRun(t, "-port", "0", "-stats")
	port := p.port(t)
	s := sender(t, "udp6", sendOpts{ttl: 9})
	send(t, s, loopback("udp6", port), []byte("first"))
	l := next(t, p.stdout, "stdout")
	if !strings.Contains(l, "[::1]:") || !strings.Contains(l, `"first"`) || !strings.Contains(l, "hlim   9") {
		t.Errorf("line %q", l)
	}
	for range 200 {
		send(t, s, loopback("udp6", port), []byte("more"))
	}
	p.cancel()
	code, stdout, stderr := p.wait(t)
	if code != exitOK || len(stderr) != 1 {
		t.Fatalf("exit %d, stderr %q; want 0 and the stats", code, stderr)
	}
	st := checkStats(t, stderr[0])
	if got := uint64(1 + len(stdout)); st["delivered"] != got {
		t.Errorf("stats delivered %d, but %d lines printed", st["delivered"], got)
	}
}

// TestRunEcho checks -echo: each datagram comes back, from the address and
// port it was sent to.
func TestRunEcho(t *testing.T) {
	if !inNetns(t) {
		return
	}
	p := startRun(t, "-port", "0", "-echo", "-count", "2")
	port := p.port(t)
	for _, network := range []string{"udp4", "udp6"} {
		s := sender(t, network, sendOpts{})
		dst := loopback(network, port)
		payload := []byte("ping over " + network)
		send(t, s, dst, payload)
		s.SetReadDeadline(time.Now().Add(waitTime))
		buf := make([]byte, 100)
		n, from, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: no echo: %v", network, err)
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from != dst || !bytes.Equal(buf[:n], payload) {
			t.Errorf("%s: echo %q from %v, want %q from %v", network, buf[:n], from, payload, dst)
		}
		next(t, p.stdout, "stdout")
	}
	code, _, stderr := p.wait(t)
	if rest := checkSummary(t, stderr, 2); code != exitOK || len(rest) != 0 {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestRunFamily checks -4 and -6: the other family's datagrams are not
// printed.
func TestRunFamily(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, tc := range []struct{ flag, want, other string }{
		{"-4", "udp4", "udp6"},
		{"-6", "udp6", "udp4"},
	} {
		p := startRun(t, tc.flag, "-i", "lo", "-port", "0", "-json", "-count", "1")
		port := p.port(t)
		send(t, sender(t, tc.other, sendOpts{}), loopback(tc.other, port), []byte("no"))
		send(t, sender(t, tc.want, sendOpts{}), loopback(tc.want, port), []byte("yes"))
		m := checkSchema(t, next(t, p.stdout, "stdout"), false)
		if m["payload"] != hexOf("yes") {
			t.Errorf("%s: printed %v", tc.flag, m)
		}
		if code, stdout, _ := p.wait(t); code != exitOK || len(stdout) != 0 {
			t.Errorf("%s: exit %d, more stdout %q", tc.flag, code, stdout)
		}
	}
}

// TestRunFragmented sends datagrams larger than loopback's MTU: they are
// printed whole, with the number of fragments they arrived in.
func TestRunFragmented(t *testing.T) {
	if !inNetns(t) {
		return
	}
	setLoopbackMTU(t, 1280)
	p := startRun(t, "-port", "0", "-json", "-count", "2")
	port := p.port(t)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 3000/16)
	for _, tc := range []struct {
		network string
		ext     []int
	}{
		{"udp4", []int{}},
		{"udp6", []int{44}}, // the Fragment header
	} {
		network := tc.network
		s := sender(t, network, sendOpts{df: -1})
		send(t, s, loopback(network, port), payload)
		m := checkSchema(t, next(t, p.stdout, "stdout"), false)
		w := wantDatagram{
			src: localAddr(s), dst: loopback(network, port), ttl: 64, extHeaders: tc.ext,
			fragments: 3, payload: payload, ifname: "lo", ifindex: loIndex(t),
		}
		checkDatagram(t, m, w)
		if network == "udp6" && m["id"] == 0.0 {
			t.Errorf("IPv6 fragmented datagram with id 0")
		}
	}
	if code, _, _ := p.wait(t); code != exitOK {
		t.Errorf("exit %d", code)
	}
}

// TestRunCount checks that -count stops at its number however many
// datagrams arrive at once, and that -stats then counts those printed, not
// those the library had already queued.
func TestRunCount(t *testing.T) {
	if !inNetns(t) {
		return
	}
	p := startRun(t, "-port", "0", "-count", "2", "-stats")
	port := p.port(t)
	s := sender(t, "udp4", sendOpts{})
	for range 50 {
		send(t, s, loopback("udp4", port), []byte("burst"))
	}
	code, stdout, stderr := p.wait(t)
	if code != exitOK || len(stdout) != 2 || len(stderr) != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0, two lines and the stats", code, stdout, stderr)
	}
	if st := checkStats(t, stderr[0]); st["delivered"] != 2 {
		t.Errorf("stats %s: want delivered 2", stderr[0])
	}
}

// TestRunInterfaceGone removes the interface the tool is bound to while it
// runs: it ends with a runtime error, one line with the tool's prefix once.
func TestRunInterfaceGone(t *testing.T) {
	if !inNetns(t) {
		return
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("link", "add", "gone0", "type", "veth", "peer", "name", "gone1")
	ip("link", "set", "gone0", "up")
	p := startRun(t, "-i", "gone0", "-port", "0")
	p.port(t)
	ip("link", "del", "gone0")
	code, stdout, stderr := p.wait(t)
	// The summary says what it had received before it failed.
	if stderr = checkSummary(t, stderr, 0); code != exitRuntime || len(stdout) != 0 || len(stderr) != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q; want %d and one line after the summary", code, stdout, stderr, exitRuntime)
	}
	if msg := stderr[0]; !strings.HasPrefix(msg, "udpstream: ") || strings.Count(msg, "udpstream:") != 1 || !strings.Contains(msg, "is gone") {
		t.Errorf("stderr %q, want one line saying the interface is gone, prefixed once", msg)
	}
}

// TestRunMonitor checks -monitor against a port another socket owns:
// without it the tool says which flag to use, in one line; with it the
// tool prints what the owner receives, and the owner still receives it.
func TestRunMonitor(t *testing.T) {
	if !inNetns(t) {
		return
	}
	owner, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.IPv6Unspecified(), 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	port := localAddr(owner).Port()
	portFlag := strconv.Itoa(int(port))

	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-port", portFlag}, &stdout, &stderr); code != exitRuntime {
		t.Errorf("on an owned port: exit %d, want %d", code, exitRuntime)
	}
	msg := stderr.String()
	if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "-monitor") || strings.Contains(msg, "WithMonitor") ||
		!strings.Contains(msg, "port "+portFlag+" is in use") {
		t.Errorf("on an owned port: stderr %q, want one line naming the port and -monitor, not the library's option", msg)
	}

	p := startRun(t, "-monitor", "-port", portFlag, "-json", "-count", "2")
	if got := p.port(t); got != port {
		t.Errorf("listening on %d, want %d", got, port)
	}
	for _, network := range []string{"udp4", "udp6"} {
		s := sender(t, network, sendOpts{ttl: 33})
		payload := []byte("owned over " + network)
		send(t, s, loopback(network, port), payload)
		m := checkSchema(t, next(t, p.stdout, "stdout"), false)
		if m["payload"] != hex.EncodeToString(payload) || m["ttl"] != 33.0 {
			t.Errorf("%s: line %v", network, m)
		}
		owner.SetReadDeadline(time.Now().Add(waitTime))
		buf := make([]byte, 100)
		n, _, err := owner.ReadFromUDPAddrPort(buf)
		if err != nil || !bytes.Equal(buf[:n], payload) {
			t.Errorf("%s: the owner read %q, %v; want %q", network, buf[:n], err, payload)
		}
	}
	code, rest, errLines := p.wait(t)
	if after := checkSummary(t, errLines, 2); code != exitOK || len(rest) != 0 || len(after) != 0 {
		t.Errorf("exit %d, more stdout %q, stderr %q", code, rest, errLines)
	}
}
