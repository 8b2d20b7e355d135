package main

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/udpstream/udpstream/internal/netns"
	"github.com/udpstream/udpstream/internal/netnstest"
)

// TestRunSocketJSON runs -mode socket -json: the fields a socket sees are
// as sent, those it cannot see are null, and the fragment count of a
// datagram that came in fragments is null too.
func TestRunSocketJSON(t *testing.T) {
	if !inNetns(t) {
		return
	}
	setLoopbackMTU(t, 1280)
	p := startRun(t, "-port", "0", "-json", "-count", "3", "-mode", "socket")
	port := p.port(t)
	if p.mode != "socket" {
		t.Fatalf("mode %q, want socket", p.mode)
	}
	s1 := sender(t, "udp4", sendOpts{ttl: 42, tos: 0x2a, df: 1, ipOptions: []byte{1, 1, 1, 0}})
	s2 := sender(t, "udp6", sendOpts{ttl: 7, tos: 0xb9, dstOpts: true})
	s3 := sender(t, "udp4", sendOpts{ttl: 200, df: -1})
	big := bytes.Repeat([]byte("f"), 3000)
	want := map[netip.AddrPort]wantDatagram{
		localAddr(s1): {ttl: 42, tos: 0x2a, ipOptions: "01010100", extHeaders: []int{}, fragments: 1, payload: []byte("one")},
		localAddr(s2): {ttl: 7, tos: 0xb9, extHeaders: []int{60}, fragments: 1, payload: []byte("two")},
		localAddr(s3): {ttl: 200, extHeaders: []int{}, payload: big}, // fragments: null
	}
	for from, w := range want {
		w.src, w.dst = from, netip.AddrPortFrom(from.Addr(), port)
		w.ifname, w.ifindex, w.socket = "lo", loIndex(t), true
		want[from] = w
	}
	send(t, s1, want[localAddr(s1)].dst, []byte("one"))
	send(t, s2, want[localAddr(s2)].dst, []byte("two"))
	send(t, s3, want[localAddr(s3)].dst, big)
	checkRun(t, p, want)

	// The readable line shows "?" for what the socket cannot see.
	p = startRun(t, "-port", "0", "-count", "1", "-mode", "socket")
	port = p.port(t)
	send(t, s3, netip.AddrPortFrom(localAddr(s3).Addr(), port), big)
	if l := next(t, p.stdout, "stdout"); !strings.Contains(l, "id ? DF? MF frags ?") {
		t.Errorf("line %q: want id, DF and fragments as ?, and MF", l)
	}
	p.wait(t)
}

// TestToolAsUserSocketMode runs the tool as nobody, who may not open
// packet sockets, without -mode: it runs in socket mode, says so, and
// receives. The test runs itself again in a network namespace of its own
// (root may make one without a user namespace), where it starts the tool
// as nobody; only root can become nobody.
func TestToolAsUserSocketMode(t *testing.T) {
	const env = "UDPSTREAM_CMD_NOBODY_TEST"
	bin := tool(t)
	if os.Getenv(env) == "" {
		if os.Geteuid() != 0 {
			t.Skip("not root: cannot become nobody")
		}
		cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), netnstest.RaceEnv(), env+"=1", envTool+"="+bin)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
		out, err := cmd.CombinedOutput()
		t.Logf("in a network namespace:\n%s", out)
		if err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
			t.Fatalf("child failed: %v", err)
		}
		return
	}
	if err := netns.LoopbackUp(); err != nil {
		t.Fatal(err)
	}
	attr := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	p := startTool(t, bin, attr, "-port", "0", "-json", "-count", "1")
	port := p.port(t)
	if p.mode != "socket" {
		t.Fatalf("mode %q, want socket", p.mode)
	}
	c := sender(t, "udp6", sendOpts{ttl: 9})
	send(t, c, netip.AddrPortFrom(netip.IPv6Loopback(), port), []byte("as nobody"))
	m := checkSchema(t, next(t, p.stdout, "stdout"), false)
	checkDatagram(t, m, wantDatagram{
		src: localAddr(c), dst: netip.AddrPortFrom(netip.IPv6Loopback(), port), ttl: 9,
		extHeaders: []int{}, fragments: 1, payload: []byte("as nobody"), ifname: "lo", ifindex: loIndex(t), socket: true,
	})
	if code, _, stderr := p.wait(t); code != exitOK || len(checkSummary(t, stderr, 1)) != 0 {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}
