package udpstream

import (
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpstream/udpstream/internal/netnstest"
)

// The differential test: the kernel's own UDP socket bound to [::]:port
// and a WithMonitor stream on the same port are given the same generated
// frames (difftest_gen_test.go) on a veth link, and must agree on every
// datagram: whether it is delivered, and with which addresses, ports,
// TTL, TOS and payload. It runs again for each network: "udp4" is a
// socket bound to 0.0.0.0:port and a stream WithNetwork("udp4"), "udp6"
// one bound to [::]:port with IPV6_V6ONLY and a stream WithNetwork("udp6").
// Another socket holds multicast memberships on the link and on lo.
//
// CI runs a few seeds; a long campaign is
//
//	go test -run '^TestDifferential$' -diff.seed=1000 -diff.seeds=50 -diff.frames=20000 -v .

var (
	diffSeed     = flag.Uint64("diff.seed", 1, "first seed of the differential test")
	diffSeeds    = flag.Int("diff.seeds", 3, "number of seeds of the differential test")
	diffFrames   = flag.Int("diff.frames", 1500, "cases (datagrams) per seed of the differential test")
	diffNetworks = flag.String("diff.networks", "udp,udp4,udp6,kernel", "the networks the differential test runs, comma-separated; kernel compares a dual-stack stream in kernel-verdict mode with the monitor")
)

// diffKnown lists the differences the README names, with the reason: a
// case whose category contains a key is reported but does not fail the
// test.
var diffKnown = map[string]string{
	", over 64 fragments": "README: a datagram may come in at most 64 fragments",
}

// diffObs is one datagram as a receiver delivered it.
type diffObs struct {
	src, dst netip.AddrPort
	ttl, tos int
	payload  []byte
}

func (o diffObs) String() string {
	return fmt.Sprintf("%v -> %v ttl %d tos %#x len %d", o.src, o.dst, o.ttl, o.tos, len(o.payload))
}

// diffResult is what the two receivers made of one case.
type diffResult struct {
	kernel, stream []diffObs
}

// verdict names the disagreement of r, or "" when the receivers agree.
func (r diffResult) verdict() string {
	k, s := r.kernel, r.stream
	switch {
	case len(k) == 0 && len(s) == 0:
		return ""
	case len(s) == 0:
		return "kernel only"
	case len(k) == 0:
		return "stream only"
	case len(k) != len(s):
		return fmt.Sprintf("kernel delivered %d, stream %d", len(k), len(s))
	}
	for i := range k {
		a, b := k[i], s[i]
		var d []string
		if a.src != b.src {
			d = append(d, "src")
		}
		if a.dst != b.dst {
			d = append(d, "dst")
		}
		if a.ttl != b.ttl {
			d = append(d, "ttl")
		}
		if a.tos != b.tos {
			d = append(d, "tos")
		}
		if string(a.payload) != string(b.payload) {
			d = append(d, "payload")
		}
		if len(d) > 0 {
			return "fields differ: " + strings.Join(d, ",")
		}
	}
	return ""
}

// diffOracle is what the stream is compared with: the kernel's own UDP
// socket, or a stream in kernel-verdict mode, which delivers what the
// kernel delivers to its socket, with the ring's headers.
type diffOracle interface {
	// read returns the next datagram, waiting up to d.
	read(t *testing.T, d time.Duration) (diffObs, bool)
	// portNum is the port it receives on.
	portNum() uint16
}

// streamOracle is a stream as a diffOracle.
type streamOracle struct{ s *Stream[[]byte] }

func (o streamOracle) portNum() uint16 { return o.s.Port() }

func (o streamOracle) read(t *testing.T, d time.Duration) (diffObs, bool) {
	t.Helper()
	select {
	case p := <-o.s.Packets():
		if p.Err != nil {
			t.Fatalf("kernel-verdict stream: %v", p.Err)
		}
		h := p.Header
		return diffObs{src: h.Src, dst: h.Dst, ttl: int(h.TTL), tos: int(h.TOS), payload: p.Value}, true
	case <-time.After(d):
		return diffObs{}, false
	}
}

func (k *kernelReceiver) portNum() uint16 { return k.port }

// kernelReceiver is a plain UDP socket bound to the unspecified address
// of its network, reporting TTL, TOS and destination of each datagram.
type kernelReceiver struct {
	fd   int
	port uint16
	buf  []byte
	oob  []byte
}

// newKernelReceiver binds [::] dual-stack for "udp", 0.0.0.0 for "udp4"
// and [::] IPv6-only for "udp6", each with the kernel's defaults
// otherwise (IP_MULTICAST_ALL, IPV6_MULTICAST_ALL).
func newKernelReceiver(t *testing.T, network string) *kernelReceiver {
	t.Helper()
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{})
	if network == "udp4" {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	opts := [][2]int{{unix.IPPROTO_IP, unix.IP_RECVTTL}, {unix.IPPROTO_IP, unix.IP_RECVTOS}, {unix.IPPROTO_IP, unix.IP_PKTINFO}}
	if family == unix.AF_INET6 {
		v6only := 0
		if network == "udp6" {
			v6only = 1
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, [][2]int{{unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT}, {unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS}, {unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO}}...)
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o[0], o[1], 1); err != nil {
			t.Fatal(err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	if sa, err = unix.Getsockname(fd); err != nil {
		t.Fatal(err)
	}
	port := 0
	switch sa := sa.(type) {
	case *unix.SockaddrInet6:
		port = sa.Port
	case *unix.SockaddrInet4:
		port = sa.Port
	}
	return &kernelReceiver{fd: fd, port: uint16(port), buf: make([]byte, 1<<16), oob: make([]byte, 512)}
}

// read returns the next queued datagram, waiting up to d.
func (k *kernelReceiver) read(t *testing.T, d time.Duration) (diffObs, bool) {
	t.Helper()
	for {
		n, oobn, _, from, err := unix.Recvmsg(k.fd, k.buf, k.oob, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			fds := []unix.PollFd{{Fd: int32(k.fd), Events: unix.POLLIN}}
			if m, _ := unix.Poll(fds, int(d.Milliseconds())); m == 0 {
				return diffObs{}, false
			}
			continue
		}
		if err != nil {
			t.Fatalf("recvmsg: %v", err)
		}
		o := diffObs{payload: slices.Clone(k.buf[:n]), ttl: -1, tos: -1}
		switch sa := from.(type) {
		case *unix.SockaddrInet6:
			// The kernel names the link of a link-local source by its
			// index; the stream by the interface's name.
			o.src = netip.AddrPortFrom(diffZoned(netip.AddrFrom16(sa.Addr), int(sa.ZoneId)), uint16(sa.Port))
		case *unix.SockaddrInet4:
			o.src = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		}
		msgs, err := unix.ParseSocketControlMessage(k.oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			h := m.Header
			switch {
			case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_TTL,
				h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_HOPLIMIT,
				h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_TCLASS:
				v := int(binary.NativeEndian.Uint32(m.Data))
				if h.Type == unix.IPV6_TCLASS {
					o.tos = v
				} else {
					o.ttl = v
				}
			case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_TOS:
				o.tos = int(m.Data[0])
			case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO:
				// struct in_pktinfo: ifindex, spec_dst, addr (the header's).
				o.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[8:12])), k.port)
				// An IPv4 datagram: its source is the mapped address.
				o.src = netip.AddrPortFrom(o.src.Addr().Unmap(), o.src.Port())
			case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO:
				// struct in6_pktinfo: the address, then the interface.
				ifIndex := int(binary.NativeEndian.Uint32(m.Data[16:20]))
				a := netip.AddrFrom16([16]byte(m.Data[:16]))
				if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() {
					a = diffZoned(a, ifIndex)
				}
				o.dst = netip.AddrPortFrom(a, k.port)
			}
		}
		return o, true
	}
}

// diffZoned gives a the name of interface ifIndex as its zone; index 0
// means none.
func diffZoned(a netip.Addr, ifIndex int) netip.Addr {
	if ifIndex == 0 {
		return a
	}
	if ifi, err := net.InterfaceByIndex(ifIndex); err == nil {
		return a.WithZone(ifi.Name)
	}
	return a.WithZone(strconv.Itoa(ifIndex))
}

// diffLink is the test's link: frames sent on in1 arrive on in0.
type diffLink struct {
	in      *injector
	hostMAC net.HardwareAddr
}

func (l *diffLink) send(t *testing.T, f diffFrame) {
	t.Helper()
	dst := l.hostMAC
	switch f.link {
	case linkBroadcast:
		dst = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	case linkOther:
		dst = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	case linkMulticast:
		if is6(f.ip) {
			dst = net.HardwareAddr{0x33, 0x33, f.ip[36], f.ip[37], f.ip[38], f.ip[39]}
		} else {
			dst = net.HardwareAddr{0x01, 0, 0x5e, f.ip[17] & 0x7f, f.ip[18], f.ip[19]}
		}
	}
	if len(f.ip) == 0 {
		return
	}
	if err := l.in.writeTo(f.ip, dst); err != nil && err != unix.EMSGSIZE {
		t.Fatalf("inject: %v", err)
	}
}

// diffEnv carries the flags to the namespaced child, which is started
// without them.
const diffEnv = "UDPSTREAM_DIFF"

func TestDifferential(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		netnstest.SkipOrFail(t, "the ip command (iproute2) is not installed")
	}
	if v := os.Getenv(diffEnv); v != "" {
		fmt.Sscanf(v, "%d,%d,%d,%s", diffSeed, diffSeeds, diffFrames, diffNetworks)
	}
	if !netnstest.InNetns(t, fmt.Sprintf("%s=%d,%d,%d,%s", diffEnv, *diffSeed, *diffSeeds, *diffFrames, *diffNetworks)) {
		return
	}
	// One CPU's backlog for every frame: frames arrive in the order they
	// were sent, so a barrier sent after a case settles it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpu unix.CPUSet
	cpu.Set(0)
	if err := unix.SchedSetaffinity(0, &cpu); err != nil {
		t.Logf("pinning the sender: %v", err)
	}
	in := injectLink(t, diffPrefix4, diffPrefix6)
	// The sending end stays quiet: no IPv6 of its own (router
	// solicitations, listener reports).
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/in1/disable_ipv6", []byte("1"), 0)
	// Datagrams the generator leaves incomplete on purpose hold the
	// kernel's reassembly memory for the whole timeout: over a long
	// campaign they would fill ipfrag_high_thresh, after which the kernel
	// refuses every fragment. A short timeout, which the streams read
	// too, and a higher bound, the streams' too, keep both from that.
	for name, v := range map[string]string{
		"ipv4/ipfrag_high_thresh": strconv.Itoa(64 << 20), "ipv6/ip6frag_high_thresh": strconv.Itoa(64 << 20),
		"ipv4/ipfrag_time": "5", "ipv6/ip6frag_time": "5",
	} {
		if err := os.WriteFile("/proc/sys/net/"+name, []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	joinDiffGroups(t)
	link := &diffLink{in: in, hostMAC: in.dst}
	solicited := solicitedLinkLocal(t, "in0")
	for _, network := range strings.Split(*diffNetworks, ",") {
		t.Run(network, func(t *testing.T) {
			var k diffOracle
			var ks *Stream[[]byte]
			if network == "kernel" {
				network = "udp"
				ks = openT(t, 0, Payload, WithMode(ModeKernel), WithChannelCapacity(4096), WithReassembly(0, 64<<20, 0, 0))
				k = streamOracle{ks}
			} else {
				k = newKernelReceiver(t, network)
			}
			s := openT(t, k.portNum(), Payload, WithMonitor(), WithChannelCapacity(4096), WithNetwork(network), WithReassembly(0, 64<<20, 0, 0))
			fams := diffFamilies(network)
			waitReady(t, link, k, s, fams)
			failed := false
			for seed := *diffSeed; seed < *diffSeed+uint64(*diffSeeds); seed++ {
				genSeed := seed
				if ks != nil {
					// Other cases than the "udp" run's: the kernel would
					// still hold that run's unfinished datagrams, under
					// the same IDs, for ipfrag_time.
					genSeed += 1 << 40
				}
				g := newDiffGen(genSeed, k.portNum(), fams)
				g.solicitedLL = solicited
				g.idBase = uint32(seed-*diffSeed) * uint32(*diffFrames)
				if !runDiffSeed(t, link, k, s, g, seed, *diffFrames) {
					failed = true
				}
			}
			if failed {
				t.Fail()
			}
			ms := settled(t, s)
			t.Logf("stream stats: %+v", ms)
			if ks != nil {
				// Every datagram both the ring and the kernel took paired.
				// The kernel refused only what the monitor found not for
				// this host, which kernel-verdict mode leaves to the
				// kernel: a datagram that failed to pair would count as
				// refused too. (Twins without a ring datagram are those
				// the ring refused, as it may a datagram of more than 64
				// fragments.)
				st := settled(t, ks)
				t.Logf("kernel-verdict stream stats: %+v", st)
				if st.Rejected != ms.NotLocal || st.KernelDrops != 0 {
					t.Errorf("kernel-verdict stream: %d refused, want the monitor's %d not for this host; %d kernel drops", st.Rejected, ms.NotLocal, st.KernelDrops)
				}
			}
		})
	}
}

// diffFamilies are the IP versions a network receives.
func diffFamilies(network string) []int {
	switch network {
	case "udp4":
		return []int{4}
	case "udp6":
		return []int{6}
	}
	return []int{4, 6}
}

// joinDiffGroups has a socket of its own join the generator's groups:
// diffJoined4 and diffJoined6 on the test's link, diffJoinedLo4 and
// diffJoinedLo6 on lo only.
func joinDiffGroups(t *testing.T) {
	t.Helper()
	link := iface(t, "in0")
	lo := iface(t, "lo")
	fd4, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd4) })
	fd6, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd6) })
	for _, j := range []struct {
		group netip.Addr
		ifi   *net.Interface
	}{{diffJoined4, link}, {diffJoinedLo4, lo}, {diffJoined6, link}, {diffJoinedLo6, lo}} {
		if j.group.Is4() {
			err = unix.SetsockoptIPMreqn(fd4, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, &unix.IPMreqn{Multiaddr: j.group.As4(), Ifindex: int32(j.ifi.Index)})
		} else {
			err = unix.SetsockoptIPv6Mreq(fd6, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP, &unix.IPv6Mreq{Multiaddr: j.group.As16(), Interface: uint32(j.ifi.Index)})
		}
		if err != nil {
			t.Fatalf("joining %v on %s: %v", j.group, j.ifi.Name, err)
		}
	}
}

// solicitedLinkLocal is the solicited-node group of the link-local
// address of interface name (RFC 4291, 2.7.1).
func solicitedLinkLocal(t *testing.T, name string) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ifi := iface(t, name)
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err == nil && p.Addr().IsLinkLocalUnicast() {
				b := p.Addr().As16()
				return netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s has no link-local address", name)
	return netip.Addr{}
}

// barrier returns the frames that settle case id: one valid datagram of
// each family, whose tags have the top bit set.
func barrier(port uint16, id uint32, fams []int) []diffFrame {
	var out []diffFrame
	for _, fam := range fams {
		v6 := fam == 6
		pl := make([]byte, 8)
		copy(pl, diffMagic[:])
		binary.BigEndian.PutUint32(pl[4:], id|1<<31)
		var pkt []byte
		if v6 {
			h := ip6{hop: 64, src: netip.MustParseAddr("2001:db8::5").As16(), dst: diffLocal6.As16()}
			pkt = h.udp(7, port, pl)
		} else {
			h := ip4{ttl: 64, id: 1, src: netip.MustParseAddr("192.0.2.5").As4(), dst: diffLocal4.As4()}
			pkt = h.udp(7, port, pl)
		}
		out = append(out, diffFrame{pkt, linkHost})
	}
	return out
}

// waitReady sends barriers until both receivers see them: addresses are
// set up and the stream knows them.
func waitReady(t *testing.T, l *diffLink, k diffOracle, s *Stream[[]byte], fams []int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, f := range barrier(k.portNum(), 0, fams) {
			l.send(t, f)
		}
		got := 0
		if _, ok := k.read(t, 100*time.Millisecond); ok {
			got++
		}
		select {
		case <-s.Packets():
			got++
		case <-time.After(100 * time.Millisecond):
		}
		if got == 2 {
			time.Sleep(50 * time.Millisecond)
			for {
				if _, ok := k.read(t, 0); !ok {
					break
				}
			}
			for len(s.Packets()) > 0 {
				<-s.Packets()
			}
			return
		}
	}
	t.Fatal("the receivers never saw the link's first datagrams")
}

// settle collects what each receiver delivered until it delivered every
// barrier of case id, one per family. A barrier the kernel socket lost is
// sent again (the kernel loses one, rarely, right after a case of hundreds
// of tiny fragments); a copy that arrives late, during a later case, is a
// barrier of an earlier case and is passed over.
func settle(t *testing.T, l *diffLink, k diffOracle, s *Stream[[]byte], id uint32, fams []int, frames []diffFrame) diffResult {
	t.Helper()
	var r diffResult
	want := id | 1<<31
	late := func(payload []byte) bool {
		tag, ok := diffTag(payload)
		return ok && tag&(1<<31) != 0 && tag != want
	}
	resent := 0
	for seen := 0; seen < len(fams); {
		o, ok := k.read(t, 2*time.Second)
		if !ok {
			if resent == 2 {
				t.Fatalf("case %d: the kernel socket never delivered the barrier%s", id, hexFrames(frames))
			}
			resent++
			for _, f := range barrier(k.portNum(), id, fams) {
				l.send(t, f)
			}
			continue
		}
		if tag, ok := diffTag(o.payload); ok && tag == want {
			seen++
			continue
		}
		if !late(o.payload) {
			r.kernel = append(r.kernel, o)
		}
	}
	timeout := time.After(2 * time.Second)
	for seen := 0; seen < len(fams)*(resent+1); {
		select {
		case p := <-s.Packets():
			if p.Err != nil {
				t.Fatalf("stream: %v", p.Err)
			}
			if tag, ok := diffTag(p.Value); ok && tag == want {
				seen++
				continue
			}
			if !late(p.Value) {
				h := p.Header
				r.stream = append(r.stream, diffObs{src: h.Src, dst: h.Dst, ttl: int(h.TTL), tos: int(h.TOS), payload: p.Value})
			}
		case <-timeout:
			if resent > 0 && seen >= len(fams) {
				return r // the stream had the first barriers too
			}
			t.Fatalf("case %d: the stream never delivered the barrier (stats %+v)%s", id, s.Stats(), hexFrames(frames))
		}
	}
	return r
}

// diffExample is the smallest case that showed one disagreement.
type diffExample struct {
	count int
	c     diffCase
	r     diffResult
}

// runDiffSeed runs the cases of one seed and reports their disagreements;
// it returns false when one that the README does not name was found.
func runDiffSeed(t *testing.T, l *diffLink, k diffOracle, s *Stream[[]byte], g *diffGen, seed uint64, n int) bool {
	t.Helper()
	found := map[string]*diffExample{}
	var valid, validKernel, validStream, frames, mcast, mcastKernel int
	for range n {
		c := g.next()
		for _, f := range c.frames {
			l.send(t, f)
		}
		frames += len(c.frames)
		for _, f := range barrier(k.portNum(), c.id, g.fams) {
			l.send(t, f)
		}
		r := settle(t, l, k, s, c.id, g.fams, c.frames)
		for _, o := range append(slices.Clone(r.kernel), r.stream...) {
			if tag, ok := diffTag(o.payload); ok && tag != c.id {
				t.Fatalf("case %d: a datagram of case %d arrived: pairing is broken", c.id, tag)
			}
		}
		if strings.HasSuffix(c.cat, " valid") || strings.HasSuffix(c.cat, "valid fragmented") {
			valid++
			validKernel += min(len(r.kernel), 1)
			validStream += min(len(r.stream), 1)
		}
		if strings.Contains(c.cat, "multicast destination") {
			mcast++
			mcastKernel += min(len(r.kernel), 1)
		}
		v := r.verdict()
		if v == "" {
			continue
		}
		key := c.cat + ": " + v
		e := found[key]
		if e == nil {
			e = &diffExample{c: c, r: r}
			found[key] = e
		} else if c.size() < e.c.size() {
			e.c, e.r = c, r
		}
		e.count++
	}
	t.Logf("seed %d: %d cases, %d frames; valid unfragmented or fragmented: %d, delivered by the kernel %d, by the stream %d; to multicast groups: %d, delivered by the kernel %d", seed, n, frames, valid, validKernel, validStream, mcast, mcastKernel)
	ok := true
	// The test is worth nothing unless most valid datagrams got through.
	if validKernel < valid*8/10 || validStream < valid*8/10 {
		t.Errorf("seed %d: of %d valid datagrams the kernel delivered %d and the stream %d", seed, valid, validKernel, validStream)
		ok = false
	}
	keys := make([]string, 0, len(found))
	for key := range found {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	var sum strings.Builder
	for _, key := range keys {
		fmt.Fprintf(&sum, "\n  %5d  %s", found[key].count, key)
	}
	if len(keys) > 0 {
		t.Logf("seed %d: disagreements by category:%s", seed, sum.String())
	}
	for _, key := range keys {
		e := found[key]
		reason := ""
		for known, why := range diffKnown {
			if strings.Contains(key, known) {
				reason = why
			}
		}
		msg := fmt.Sprintf("seed %d: %d× %s\n  smallest: case %d, kernel %v, stream %v%s", seed, e.count, key, e.c.id, e.r.kernel, e.r.stream, hexFrames(e.c.frames))
		if reason != "" {
			t.Logf("known difference (%s): %s", reason, msg)
			continue
		}
		t.Log(msg)
		ok = false
	}
	if !ok {
		t.Errorf("seed %d: the stream and the kernel disagree (above)", seed)
	}
	return ok
}

func hexFrames(fs []diffFrame) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "\n    link %d: %s", f.link, hex.EncodeToString(f.ip))
	}
	return b.String()
}
