package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/udpstream/udpstream/internal/netns"
	"github.com/udpstream/udpstream/internal/netnstest"
)

// These tests run the built binary, as scripts do: its output through
// pipes, its end by signal, its exit status.

// TestToolCount runs the binary with -count and -stats, once plainly and
// once with -port-errors, where a datagram to another port comes first.
func TestToolCount(t *testing.T) {
	bin := tool(t)
	if !inNetns(t) {
		return
	}
	for _, portErrors := range []bool{false, true} {
		args := []string{"-port", "0", "-json", "-count", "3", "-stats"}
		if portErrors {
			args = append(args, "-port-errors")
		}
		p := startTool(t, bin, nil, args...)
		port := p.port(t)

		if portErrors {
			sink, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(loopback("udp6", 0)))
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			send(t, sender(t, "udp6", sendOpts{}), localAddr(sink), []byte("elsewhere"))
			m := checkSchema(t, next(t, p.stdout, "stdout"), true)
			if m["dport"] != float64(localAddr(sink).Port()) || m["family"] != 6.0 {
				t.Errorf("error line %v", m)
			}
		}

		s4 := sender(t, "udp4", sendOpts{ttl: 3, tos: 0x10})
		s6 := sender(t, "udp6", sendOpts{ttl: 4, tos: 0x20})
		sent := []struct {
			s       *net.UDPConn
			payload string
		}{{s4, "alpha"}, {s6, "beta"}, {s4, "gamma"}}
		for _, d := range sent {
			from := localAddr(d.s)
			send(t, d.s, netip.AddrPortFrom(from.Addr(), port), []byte(d.payload))
			// One at a time, so that the lines come in the order sent
			// whichever family carried them.
			m := checkSchema(t, next(t, p.stdout, "stdout"), false)
			ttl, tos := 3, 0x10
			if from.Addr().Is6() {
				ttl, tos = 4, 0x20
			}
			checkDatagram(t, m, wantDatagram{
				src: from, dst: netip.AddrPortFrom(from.Addr(), port), ttl: ttl, tos: tos,
				extHeaders: []int{}, fragments: 1, payload: []byte(d.payload),
				ifname: "lo", ifindex: loIndex(t),
			})
		}

		code, stdout, stderr := p.wait(t)
		if code != exitOK || len(stdout) != 0 || len(stderr) != 1 {
			t.Fatalf("%q: exit %d, more stdout %q, stderr %q; want 0 and the stats", args, code, stdout, stderr)
		}
		st := checkStats(t, stderr[0])
		wantDropped := uint64(0)
		if portErrors {
			wantDropped = 1
		}
		if st["delivered"] != 3 || st["dropped"] != wantDropped || st["other_port"] != wantDropped {
			t.Errorf("%q: stats %s, want delivered 3, dropped and other_port %d", args, stderr[0], wantDropped)
		}
	}
}

// TestToolSignal checks that SIGTERM and SIGINT end the binary with status
// 0 after the lines received, and the stats.
func TestToolSignal(t *testing.T) {
	bin := tool(t)
	if !inNetns(t) {
		return
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		p := startTool(t, bin, nil, "-port", "0", "-json", "-stats")
		port := p.port(t)
		send(t, sender(t, "udp4", sendOpts{}), loopback("udp4", port), []byte(sig.String()))
		// The line arrives while the tool runs: stdout is not held back.
		m := checkSchema(t, next(t, p.stdout, "stdout"), false)
		if m["payload"] != hexOf(sig.String()) {
			t.Errorf("%v: line %v", sig, m)
		}
		if err := p.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := p.wait(t)
		if code != exitOK || len(stdout) != 0 || len(stderr) != 1 {
			t.Fatalf("%v: exit %d, more stdout %q, stderr %q; want 0 and the stats", sig, code, stdout, stderr)
		}
		if st := checkStats(t, stderr[0]); st["delivered"] != 1 {
			t.Errorf("%v: stats %s, want delivered 1", sig, stderr[0])
		}
	}
}

// TestToolBurst checks the buffered output of the binary end to end: a
// burst's lines, the last included, all reach the reader of the pipe
// while the tool waits for traffic that does not come.
func TestToolBurst(t *testing.T) {
	bin := tool(t)
	if !inNetns(t) {
		return
	}
	p := startTool(t, bin, nil, "-port", "0", "-json")
	port := p.port(t)
	s := sender(t, "udp4", sendOpts{})
	const n = 300
	for i := range n {
		send(t, s, loopback("udp4", port), []byte(strconv.Itoa(i)))
	}
	for i := range n {
		m := checkSchema(t, next(t, p.stdout, "stdout"), false)
		if m["payload"] != hexOf(strconv.Itoa(i)) {
			t.Fatalf("line %d: %v", i, m)
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := p.wait(t)
	if rest := checkSummary(t, stderr, n); code != exitOK || len(stdout) != 0 || len(rest) != 0 {
		t.Errorf("exit %d, more stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestToolClosedStdout closes the reading end of the binary's stdout after
// one line, as "| head -1" does: the binary stops, prints the stats and
// exits 0, rather than dying of SIGPIPE with the stats unsaid.
func TestToolClosedStdout(t *testing.T) {
	bin := tool(t)
	if !inNetns(t) {
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(bin, "-port", "0", "-stats")
	cmd.Stdout = w
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	var wg sync.WaitGroup
	closed := make(chan string)
	close(closed)
	p := &proc{stdout: closed, stderr: lines(errPipe, &wg), cmd: cmd, done: make(chan struct{})}
	go func() {
		wg.Wait()
		cmd.Wait()
		p.code = cmd.ProcessState.ExitCode() // -1 when a signal ended it
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	port := p.port(t)

	s := sender(t, "udp4", sendOpts{})
	send(t, s, loopback("udp4", port), []byte("first"))
	if l, err := bufio.NewReader(r).ReadString('\n'); err != nil || !strings.Contains(l, `"first"`) {
		t.Fatalf("first line %q, %v", l, err)
	}
	r.Close()
	send(t, s, loopback("udp4", port), []byte("to nobody"))
	code, _, stderr := p.wait(t)
	if code != exitOK || len(stderr) != 1 {
		t.Fatalf("exit %d (%v), stderr %q; want 0 and the stats", code, cmd.ProcessState, stderr)
	}
	if st := checkStats(t, stderr[0]); st["delivered"] != 1 {
		t.Errorf("stats %s: want delivered 1, the line read", stderr[0])
	}
}

// checkDemo checks a finished demo's output: the port first on stderr,
// then (when it had to make one) the note that it made its own namespace;
// on stdout the IPv4 datagram and then the IPv6 one, with their TTL and
// TOS as sent. It returns the rest of stderr.
func checkDemo(t *testing.T, p *proc, asJSON, ownNamespace bool) []string {
	t.Helper()
	code, stdout, stderr := p.wait(t)
	if code != exitOK || len(stderr) == 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	m := listeningRE.FindStringSubmatch(stderr[0])
	if m == nil {
		t.Fatalf("first stderr line %q, want the port", stderr[0])
	}
	port, _ := strconv.Atoi(m[1])
	stderr = stderr[1:]
	noted := len(stderr) > 0 && strings.Contains(stderr[0], "namespace of its own")
	if noted != ownNamespace {
		t.Errorf("stderr %q: want a note of its own namespace: %v", stderr, ownNamespace)
	}
	if noted {
		stderr = stderr[1:]
	}
	if len(stdout) != len(demoSends) {
		t.Fatalf("stdout %q, want %d lines", stdout, len(demoSends))
	}
	for i, d := range demoSends {
		family := 6.0
		if d.addr.Is4() {
			family = 4
		}
		if asJSON {
			m := checkSchema(t, stdout[i], false)
			if m["family"] != family || m["src"] != d.addr.String() || m["dst"] != d.dst().String() ||
				m["dport"] != float64(port) || m["ttl"] != float64(d.ttl) || m["tos"] != float64(d.tos) ||
				m["payload"] != hexOf(d.payload()) {
				t.Errorf("line %d: %v, want from %v to %v with TTL %d, TOS %#x", i, m, d.addr, d.dst(), d.ttl, d.tos)
			}
			continue
		}
		l := stdout[i]
		ttl := " ttl"
		if family == 6 {
			ttl = "hlim"
		}
		for _, want := range []string{
			fmt.Sprintf("IPv%v  ", family),
			netip.AddrPortFrom(d.dst(), uint16(port)).String(),
			fmt.Sprintf("%s %3d ", ttl, d.ttl),
			fmt.Sprintf(" tos 0x%02x ", d.tos),
			`"` + d.payload() + `"`,
		} {
			if !strings.Contains(l, want) {
				t.Errorf("line %d %q: no %q", i, l, want)
			}
		}
	}
	return stderr
}

// TestDemo runs -demo where it has CAP_NET_RAW: in the test's namespace.
func TestDemo(t *testing.T) {
	bin := tool(t)
	if !inNetns(t) {
		return
	}
	if rest := checkDemo(t, startTool(t, bin, nil, "-demo"), false, false); len(rest) != 0 {
		t.Errorf("more stderr %q", rest)
	}
	rest := checkDemo(t, startTool(t, bin, nil, "-demo", "-json", "-stats"), true, false)
	if len(rest) != 1 {
		t.Fatalf("stderr %q, want the stats", rest)
	}
	if st := checkStats(t, rest[0]); st["delivered"] != uint64(len(demoSends)) || st["dropped"] != 0 {
		t.Errorf("stats %s: want delivered %d, dropped 0", rest[0], len(demoSends))
	}
}

// TestDemoUnprivileged runs -demo where it lacks CAP_NET_RAW: in a user
// namespace of its own but the host's network namespace, whose packet
// sockets that user namespace may not open, even as root. The demo must
// move into a network namespace of its own and work there.
func TestDemoUnprivileged(t *testing.T) {
	bin := tool(t)
	for _, asJSON := range []bool{false, true} {
		args := []string{"-demo"}
		if asJSON {
			args = append(args, "-json")
		}
		if rest := checkDemo(t, startTool(t, bin, netns.UserNS(0), args...), asJSON, true); len(rest) != 0 {
			t.Errorf("more stderr %q", rest)
		}
	}
}

// TestDemoAsUser runs -demo as an ordinary user, without CAP_NET_RAW: the
// user running the tests, or nobody when that is root (root's demo would
// use the host's loopback, which the tests leave alone).
func TestDemoAsUser(t *testing.T) {
	bin := tool(t)
	var attr *syscall.SysProcAttr
	switch {
	case os.Geteuid() == 0:
		attr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	case hasCapNetRaw(t):
		t.Skip("this user has CAP_NET_RAW: the demo would use the host's loopback")
	}
	p := startTool(t, bin, attr, "-demo")
	// Without user namespaces the demo cannot run: it must say why, in
	// one line.
	if code, _, stderr := p.wait(t); code == exitRuntime && len(stderr) == 1 && strings.Contains(stderr[0], "no user namespace") {
		netnstest.SkipOrFail(t, stderr[0])
	}
	checkDemo(t, p, false, true)
}
