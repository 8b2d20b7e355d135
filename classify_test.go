package udpstream

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

// classifyCase is one frame and everything classify must say about it.
type classifyCase struct {
	name    string
	frame   []byte
	want    uint8  // the socket's family
	port    uint16 // the listened port; 0 means testPort
	flags   classifyFlags
	verdict verdict
	hdr     *Header   // the expected Header; nil leaves it unchecked
	ext     []uint8   // the expected extension headers, checked with hdr
	payload []byte    // the expected UDP payload, checked on deliver
	frag    *fragWant // checked on fragment
}

type fragWant struct {
	id         uint32
	offset     int
	more       bool
	head       []byte
	nextHeader uint8
	data       []byte
}

func ap4(a [4]byte, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4(a), port)
}

func ap6(a [16]byte, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(a), port)
}

var verdictNames = [...]string{
	deliver: "deliver", fragment: "fragment", dropNotIP: "dropNotIP",
	dropNotUDP: "dropNotUDP", dropOtherPort: "dropOtherPort",
	dropMalformedIPHeader: "dropMalformedIPHeader", dropMalformedIPLength: "dropMalformedIPLength",
	dropMalformedExtHeader: "dropMalformedExtHeader", dropMalformedFragment: "dropMalformedFragment",
	dropMalformedUDPHeader: "dropMalformedUDPHeader", dropMalformedUDPLength: "dropMalformedUDPLength",
	dropBadIPChecksum: "dropBadIPChecksum", dropBadUDPChecksum: "dropBadUDPChecksum",
	dropZeroChecksum6: "dropZeroChecksum6", dropUnsupported: "dropUnsupported",
	dropBadOptions: "dropBadOptions", dropMartian: "dropMartian",
}

// verdictName names v in failure messages.
func verdictName(v verdict) string {
	if int(v) < len(verdictNames) && verdictNames[v] != "" {
		return verdictNames[v]
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// headerDiff lists the fields where got differs from want.
func headerDiff(got, want Header) []string {
	var d []string
	add := func(name string, g, w any) { d = append(d, fmt.Sprintf("%s = %v, want %v", name, g, w)) }
	if got.Version != want.Version {
		add("Version", got.Version, want.Version)
	}
	if got.Src != want.Src {
		add("Src", got.Src, want.Src)
	}
	if got.Dst != want.Dst {
		add("Dst", got.Dst, want.Dst)
	}
	if got.TTL != want.TTL {
		add("TTL", got.TTL, want.TTL)
	}
	if got.TOS != want.TOS {
		add("TOS", got.TOS, want.TOS)
	}
	if got.ID != want.ID {
		add("ID", got.ID, want.ID)
	}
	if got.DF != want.DF {
		add("DF", got.DF, want.DF)
	}
	if got.MF != want.MF {
		add("MF", got.MF, want.MF)
	}
	if got.FlowLabel != want.FlowLabel {
		add("FlowLabel", got.FlowLabel, want.FlowLabel)
	}
	if !bytes.Equal(got.Options, want.Options) || (got.Options == nil) != (want.Options == nil) {
		add("Options", fmt.Sprintf("%x (nil %v)", got.Options, got.Options == nil),
			fmt.Sprintf("%x (nil %v)", want.Options, want.Options == nil))
	}
	if got.ExtHeaders != nil {
		add("ExtHeaders", got.ExtHeaders, "nil (parsed keeps them in ext)")
	}
	if got.Fragments != want.Fragments {
		add("Fragments", got.Fragments, want.Fragments)
	}
	if got.UDPLength != want.UDPLength {
		add("UDPLength", got.UDPLength, want.UDPLength)
	}
	if got.UDPChecksum != want.UDPChecksum {
		add("UDPChecksum", fmt.Sprintf("%#04x", got.UDPChecksum), fmt.Sprintf("%#04x", want.UDPChecksum))
	}
	if got.IfIndex != 0 || !got.Time.IsZero() {
		add("IfIndex/Time", "set", "left to the stream")
	}
	return d
}

func runClassifyCases(t *testing.T, cases []classifyCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			port := tc.port
			if port == 0 {
				port = testPort
			}
			frame := bytes.Clone(tc.frame)
			var p parsed
			v := classify(frame, tc.want, port, tc.flags, &p)
			if v != tc.verdict {
				t.Fatalf("verdict %s, want %s", verdictName(v), verdictName(tc.verdict))
			}
			if !bytes.Equal(frame, tc.frame) {
				t.Errorf("classify wrote to the frame")
			}
			if msg := checkViews(frame, tc.want, port, tc.flags, v, &p); msg != "" {
				t.Errorf("%s", msg)
			}
			if tc.hdr != nil {
				for _, d := range headerDiff(p.Header, *tc.hdr) {
					t.Errorf("%s", d)
				}
				if got := p.ext[:p.extN]; !slices.Equal(got, tc.ext) {
					t.Errorf("ext = %v, want %v", got, tc.ext)
				}
				if tc.hdr.Options != nil && !inside(frame, p.Options) {
					t.Errorf("Options is not a view into the frame")
				}
			}
			if v == deliver && tc.payload != nil && !bytes.Equal(p.udp[8:], tc.payload) {
				t.Errorf("payload = %x, want %x", p.udp[8:], tc.payload)
			}
			if v == fragment && tc.frag != nil {
				checkFrag(t, frame, p.frag, *tc.frag)
			}
		})
	}
}

func checkFrag(t *testing.T, frame []byte, got fragInfo, want fragWant) {
	t.Helper()
	if got.id != want.id || got.offset != want.offset || got.more != want.more || got.nextHeader != want.nextHeader {
		t.Errorf("frag = {id %#x offset %d more %v nh %d}, want {id %#x offset %d more %v nh %d}",
			got.id, got.offset, got.more, got.nextHeader, want.id, want.offset, want.more, want.nextHeader)
	}
	if !bytes.Equal(got.head, want.head) {
		t.Errorf("frag.head = % x\nwant % x", got.head, want.head)
	}
	if !bytes.Equal(got.data, want.data) {
		t.Errorf("frag.data = % x\nwant % x", got.data, want.data)
	}
	// Reassembly joins head and data by position: both must be views.
	if !startsAt(frame, got.head) || !inside(frame, got.data) {
		t.Errorf("frag head or data is not a view into the frame")
	}
}

// otherFamilyCases are frames the socket's family rules out before any
// parsing.
func otherFamilyCases() []classifyCase {
	p4 := v4().udp(1000, testPort, []byte("x"))
	p6 := v6().udp(1000, testPort, []byte("x"))
	return []classifyCase{
		{name: "empty frame", frame: nil, want: 4, verdict: dropNotIP},
		{name: "empty frame v6", frame: []byte{}, want: 6, verdict: dropNotIP},
		{name: "IPv4 on the IPv6 socket", frame: p4, want: 6, verdict: dropNotIP},
		{name: "IPv6 on the IPv4 socket", frame: p6, want: 4, verdict: dropNotIP},
		{name: "version 0", frame: edited(p4, func(b []byte) { b[0] = 0x05 }), want: 4, verdict: dropNotIP},
		{name: "version 5", frame: edited(p4, func(b []byte) { b[0] = 0x55 }), want: 4, verdict: dropNotIP},
		{name: "version 15 on v6", frame: edited(p6, func(b []byte) { b[0] |= 0xf0 }), want: 6, verdict: dropNotIP},
	}
}

func TestClassifyOtherFamily(t *testing.T) { runClassifyCases(t, otherFamilyCases()) }

// TestClassifyCoversEveryVerdict keeps the tables honest: each verdict the
// parser can return is asserted by some case.
func TestClassifyCoversEveryVerdict(t *testing.T) {
	seen := map[verdict]bool{}
	for _, cs := range [][]classifyCase{otherFamilyCases(), ipv4Cases(), ipv6Cases(), udpCases()} {
		for _, c := range cs {
			seen[c.verdict] = true
		}
	}
	for v := deliver; v <= dropUnsupported; v++ {
		if !seen[v] {
			t.Errorf("no table case expects %s", verdictName(v))
		}
	}
}

// truncationSources are valid packets whose every prefix is tried.
func truncationSources() []struct {
	name  string
	want  uint8
	frame []byte
} {
	opts := []byte{0x94, 0x04, 0, 0, 1, 1, 1, 0}
	h4 := v4()
	h4.opts = opts
	return []struct {
		name  string
		want  uint8
		frame []byte
	}{
		{"v4", 4, v4().udp(1000, testPort, []byte("hello"))},
		{"v4 options", 4, h4.udp(1000, testPort, []byte("hello"))},
		{"v6", 6, v6().udp(1000, testPort, []byte("hello"))},
		{"v6 hbh dest", 6, v6(hbh(), destOpts()).udp(1000, testPort, []byte("hello"))},
		{"v6 routing atomic-fragment dest16", 6,
			v6(hbh(), routingHdr(0), fragHdr(0, false, 7), optsHdr(nhDestOptions, 16)).udp(1000, testPort, []byte("hello"))},
	}
}

// TestClassifyTruncated cuts valid packets at every byte. A bare prefix
// leaves the IP length field lying; it must be caught there. The same
// prefix with its IP length made to agree must be caught by the layer the
// cut falls in. Neither may ever be delivered.
func TestClassifyTruncated(t *testing.T) {
	for _, src := range truncationSources() {
		var p parsed
		if v := classify(src.frame, src.want, testPort, 0, &p); v != deliver {
			t.Fatalf("%s: whole packet: verdict %s, want deliver", src.name, verdictName(v))
		}
		ipHdr := 20
		if src.want == 6 {
			ipHdr = 40
		} else {
			ipHdr = int(src.frame[0]&0xf) * 4
		}
		udpStart := len(src.frame) - 8 - len("hello")
		for n := range len(src.frame) {
			cut := src.frame[:n:n]
			var want verdict
			switch {
			case n == 0:
				want = dropNotIP
			case n < ipHdr:
				want = dropMalformedIPHeader
			default:
				want = dropMalformedIPLength
			}
			if v := classify(cut, src.want, testPort, 0, &p); v != want {
				t.Errorf("%s: prefix %d: verdict %s, want %s", src.name, n, verdictName(v), verdictName(want))
			}

			if n < ipHdr {
				continue
			}
			// The same prefix with an IP length that agrees with it.
			fixed := bytes.Clone(cut)
			if src.want == 4 {
				binary.BigEndian.PutUint16(fixed[2:], uint16(n))
				reseal4(fixed)
			} else {
				binary.BigEndian.PutUint16(fixed[4:], uint16(n-40))
			}
			switch {
			case src.want == 6 && n == 40:
				want = dropUnsupported // payload length 0 reads as a jumbogram
			case n < udpStart:
				want = dropMalformedExtHeader
			case n < udpStart+8:
				want = dropMalformedUDPHeader
			default:
				want = dropMalformedUDPLength
			}
			v := classify(fixed, src.want, testPort, 0, &p)
			if v != want {
				t.Errorf("%s: prefix %d with agreeing length: verdict %s, want %s", src.name, n, verdictName(v), verdictName(want))
			}
		}
	}
}

// TestClassifyNoAllocs proves the per-packet parse allocates nothing.
func TestClassifyNoAllocs(t *testing.T) {
	for _, size := range []int{64, 1400} {
		for _, c := range []struct {
			name  string
			want  uint8
			frame []byte
		}{
			{"v4", 4, v4().udp(1000, testPort, payloadOf(size))},
			{"v6", 6, v6().udp(1000, testPort, payloadOf(size))},
			{"v6 ext", 6, v6(hbh(), destOpts()).udp(1000, testPort, payloadOf(size))},
		} {
			for _, flags := range []classifyFlags{0, flagChecksumVouched} {
				var p parsed
				allocs := testing.AllocsPerRun(1000, func() {
					if v := classify(c.frame, c.want, testPort, flags, &p); v != deliver {
						panic(fmt.Sprintf("%s/%d: verdict %s", c.name, size, verdictName(v)))
					}
				})
				if allocs != 0 {
					t.Errorf("%s/%d flags %d: %v allocations per classify, want 0", c.name, size, flags, allocs)
				}
			}
		}
	}
}

func BenchmarkClassify(b *testing.B) {
	for _, fam := range []uint8{4, 6} {
		for _, size := range []int{64, 1400} {
			var frame []byte
			if fam == 4 {
				frame = v4().udp(1000, testPort, payloadOf(size))
			} else {
				frame = v6().udp(1000, testPort, payloadOf(size))
			}
			b.Run(fmt.Sprintf("v%d/%d", fam, size), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(frame)))
				var p parsed
				for b.Loop() {
					if classify(frame, fam, testPort, 0, &p) != deliver {
						b.Fatal("not delivered")
					}
				}
			})
		}
	}
}

// TestClassifyRules checks the verdicts that follow the namespace's
// sysctls and the frame's link-layer type.
func TestClassifyRules(t *testing.T) {
	pl := []byte("rules")
	h4 := v4()
	h4.opts = []byte{131, 7, 8, 192, 0, 2, 10, 0} // loose source route, done
	lsrr := h4.udp(1000, testPort, pl)
	seg6 := v6(extHdr{nhRouting, []byte{0, 0, 4, 0, 0, 0, 0, 0}}).udp(1000, testPort, pl)
	rt0 := v6(routingHdr(0)).udp(1000, testPort, pl)
	three := v6(extHdr{nhDestOptions, []byte{0, 0, 0x1e, 0, 0x1e, 0, 0x1e, 0}}).udp(1000, testPort, pl)

	on := defaultRules
	on.def = ifRules{sourceRoute4: true, seg6: true}
	on.ifs = map[int]ifRules{7: {}}
	on.maxDstOpts = 2
	refuse := defaultRules
	refuse.maxDstOpts = -8
	cases := []struct {
		name  string
		frame []byte
		env   frameEnv
		want  verdict
	}{
		{"source route, accept_source_route on", lsrr, frameEnv{rules: &on, ifIndex: 1}, deliver},
		{"source route, off on this interface", lsrr, frameEnv{rules: &on, ifIndex: 7}, dropBadOptions},
		{"source route, link broadcast", lsrr, frameEnv{rules: &on, ifIndex: 1, pktType: pktBroadcast}, dropBadOptions},
		{"segment routing done, seg6_enabled", seg6, frameEnv{rules: &on, ifIndex: 1}, deliver},
		{"segment routing done, off on this interface", seg6, frameEnv{rules: &on, ifIndex: 7}, dropUnsupported},
		{"routing header, link broadcast", rt0, frameEnv{pktType: pktBroadcast}, dropUnsupported},
		{"routing header, link multicast", rt0, frameEnv{pktType: pktMulticast}, dropUnsupported},
		{"three options, max_dst_opts_number 2", three, frameEnv{rules: &on}, dropBadOptions},
		{"unknown option, max_dst_opts_number negative", three, frameEnv{rules: &refuse}, dropBadOptions},
		{"three options by default", three, frameEnv{}, deliver},
	}
	for _, c := range cases {
		p := parsed{env: c.env}
		if v := classify(c.frame, c.frame[0]>>4, testPort, 0, &p); v != c.want {
			t.Errorf("%s: verdict %s, want %s", c.name, verdictName(v), verdictName(c.want))
		}
		if p.env != c.env {
			t.Errorf("%s: classify did not keep the frame's environment", c.name)
		}
	}
}
