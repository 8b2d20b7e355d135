package udpstream

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpstream/udpstream/internal/ipheader"
	"github.com/udpstream/udpstream/internal/netnstest"
)

// Tests that need the kernel run in a network namespace of their own (see
// internal/netnstest). Those that build links use the ip command.

// inNetns reports whether the caller is the namespaced child and should
// run the test body. In the parent it runs the child and returns false.
func inNetns(t *testing.T) bool {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		netnstest.SkipOrFail(t, "the ip command (iproute2) is not installed")
	}
	return netnstest.InNetns(t)
}

// ip runs the ip command, failing the test on error.
func ip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// udpSender is an ordinary UDP socket with a chosen TTL / hop limit and TOS /
// traffic class.
func udpSender(t *testing.T, network string, ttl, tos int) *net.UDPConn {
	t.Helper()
	laddr := "127.0.0.1:0"
	if network == "udp6" {
		laddr = "[::1]:0"
	}
	c, err := net.ListenPacket(network, laddr)
	if err != nil {
		t.Fatal(err)
	}
	uc := c.(*net.UDPConn)
	t.Cleanup(func() { uc.Close() })
	if err := ipheader.Set(uc, network, ttl, tos); err != nil {
		t.Fatalf("setting TTL/TOS: %v", err)
	}
	return uc
}

// sendTo sends payload from c to addr:port.
func sendTo(t *testing.T, c *net.UDPConn, addr string, port uint16, payload []byte) {
	t.Helper()
	dst := netip.AddrPortFrom(netip.MustParseAddr(addr), port)
	if _, err := c.WriteToUDPAddrPort(payload, dst); err != nil {
		t.Fatalf("send to %v: %v", dst, err)
	}
}

// vethPair creates veth pair a <-> b in this namespace, both up, and
// returns b's interface and a's MAC address (the destination for frames
// injected on b).
func vethPair(t *testing.T, a, b string) (bIf *net.Interface, aMAC net.HardwareAddr, aIf *net.Interface) {
	t.Helper()
	ip(t, "link", "add", a, "type", "veth", "peer", "name", b)
	linkUp(t, a, b)
	ai := iface(t, a)
	bi := iface(t, b)
	return bi, ai.HardwareAddr, ai
}

// linkUp sets the links up and waits until the kernel has them carry
// frames. "ip link set up" returns before that: the kernel turns a link's
// carrier and queueing discipline on a moment later (linkwatch), and
// until then it drops what is sent on it, as a test's first datagram.
func linkUp(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		ip(t, "link", "set", name, "up")
	}
	// The namespace's own view: /sys shows the one it was mounted in.
	deadline := time.Now().Add(5 * time.Second)
	for _, name := range names {
		for {
			out, err := exec.Command("ip", "-o", "link", "show", "dev", name).CombinedOutput()
			if err == nil && strings.Contains(string(out), " state UP ") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is not up after 5 s: %s %v", name, out, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	// The operational state is set just before the queueing discipline
	// is attached, under the same lock.
	time.Sleep(5 * time.Millisecond)
}

// injectLink makes a veth link whose near end, in0, has the given
// addresses (prefixes; IPv6 ones skip duplicate address detection), and
// returns an injector whose packets arrive on in0 from its peer.
func injectLink(t *testing.T, prefixes ...string) *injector {
	t.Helper()
	peer, mac, _ := vethPair(t, "in0", "in1")
	for _, p := range prefixes {
		if netip.MustParsePrefix(p).Addr().Is6() {
			addr6(t, p, "in0")
		} else {
			ip(t, "addr", "add", p, "dev", "in0")
		}
	}
	return newInjector(t, peer, mac)
}

// addr6 gives dev the IPv6 address prefix, without duplicate address
// detection, and waits until the kernel delivers datagrams to it.
// "ip addr add" returns before that, nodad or not: the address's local
// route goes into the routing table from the kernel's address workqueue
// (addrconf_dad_work), which needs the RTNL lock, and other namespaces'
// work, as their teardown, can hold that for a good part of a second.
// Until then a datagram to the address is dropped as not for this host.
// (An IPv4 address's routes are in place when "ip addr add" returns.)
func addr6(t *testing.T, prefix, dev string) {
	t.Helper()
	addr := netip.MustParsePrefix(prefix).Addr().String()
	ip(t, "-6", "addr", "add", prefix, "dev", dev, "nodad")
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("ip", "-6", "route", "show", "table", "local", "type", "local", addr, "dev", dev).CombinedOutput()
		if err == nil && len(bytes.TrimSpace(out)) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no local route for %s on %s after 5 s: %s %v", addr, dev, out, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// injector sends hand-built IP packets out of an interface with a packet
// socket, so that they arrive on its veth peer as received traffic.
type injector struct {
	fd  int
	ifi *net.Interface
	dst net.HardwareAddr
}

func newInjector(t *testing.T, ifi *net.Interface, dst net.HardwareAddr) *injector {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &injector{fd: fd, ifi: ifi, dst: dst}
}

func (in *injector) send(t *testing.T, pkt []byte) {
	t.Helper()
	if err := in.writeTo(pkt, in.dst); err != nil {
		t.Fatalf("inject: %v", err)
	}
}

// writeTo sends pkt in a frame to link-layer address dst.
func (in *injector) writeTo(pkt []byte, dst net.HardwareAddr) error {
	proto := uint16(unix.ETH_P_IP)
	if pkt[0]>>4 == 6 {
		proto = unix.ETH_P_IPV6
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: in.ifi.Index, Halen: 6}
	copy(sa.Addr[:], dst)
	return unix.Sendto(in.fd, pkt, 0, sa)
}

// leakCheck records goroutines and fds now and, at cleanup, fails if more
// remain than before once the runtime has had a moment to settle.
func leakCheck(t *testing.T) {
	t.Helper()
	// The runtime opens its poller's fds on first use: open them now, so
	// that they are not counted as the stream's.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	g0, f0, m0 := runtime.NumGoroutine(), countFDs(t), countPacketMaps(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(2 * time.Second)
		for {
			g, f, m := runtime.NumGoroutine(), countFDs(t), countPacketMaps(t)
			if g <= g0 && f <= f0 && m <= m0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("leak: goroutines %d -> %d, fds %d -> %d, packet mappings %d -> %d\n%s", g0, g, f0, f, m0, m, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// countPacketMaps counts mappings of packet sockets (receive rings).
func countPacketMaps(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("socket:["))
}

const envPeer = "UDPSTREAM_PEER_TEST"

// isPeer reports whether this process is the peer host of test t, started
// by startPeer.
func isPeer(t *testing.T) bool { return os.Getenv(envPeer) == t.Name() }

// startPeer runs test t again as a peer host: a process in a network
// namespace of its own (inside the test's user namespace), given the
// interface ifname of this namespace. The peer's test body starts once the
// interface has arrived; env passes it parameters. wait returns the peer's
// output and fails the test if the peer failed.
func startPeer(t *testing.T, ifname string, env ...string) (wait func() string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnstest.RaceEnv(), envPeer+"="+t.Name(), "UDPSTREAM_PEER_IF="+ifname)
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The peer lives until its standard input closes: its namespace, and
	// with it the link, goes when it exits.
	stay, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting peer: %v", err)
	}
	ip(t, "link", "set", ifname, "netns", fmt.Sprint(cmd.Process.Pid))
	return func() string {
		t.Helper()
		stay.Close()
		err := cmd.Wait()
		if err != nil || !bytes.Contains(out.Bytes(), []byte("--- PASS: "+t.Name())) {
			t.Fatalf("peer failed: %v\n%s", err, out.String())
		}
		return out.String()
	}
}

// peerInterface waits in the peer for its interface to arrive, brings it
// and loopback up, and returns it. The peer then stays, once its test body
// is done, until the test that started it lets it go.
func peerInterface(t *testing.T) *net.Interface {
	t.Helper()
	t.Cleanup(func() { io.Copy(io.Discard, os.Stdin) })
	name := os.Getenv("UDPSTREAM_PEER_IF")
	deadline := time.Now().Add(5 * time.Second)
	for {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			ip(t, "link", "set", "lo", "up")
			ip(t, "link", "set", name, "up")
			return ifi
		}
		if time.Now().After(deadline) {
			t.Fatalf("interface %s never arrived in the peer namespace", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// iface returns the interface named name, failing the test if there is
// none.
func iface(t *testing.T, name string) *net.Interface {
	t.Helper()
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return ifi
}
